"""The page template for graphs.html: pyvis's variables (nodes, edges, options) and vis-network inlined from
the pyvis package, nothing fetched from the network. <!--TITLE-->, <!--LEGEND--> and /*ROWS*/ are filled in
by graphs.html after pyvis renders the page.
"""

TEMPLATE = r"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>feature graph</title>
<style>{% include 'lib/vis-9.1.2/vis-network.css' %}</style>
<script>{% include 'lib/vis-9.1.2/vis-network.min.js' %}</script>
<style>
  body { font-family: sans-serif; margin: 12px; color: #222; }
  h2 { font-size: 18px; margin: 4px 0; }
  .sub { font-size: 13px; color: #555; margin-bottom: 8px; }
  #mynetwork { width: {{width}}; height: {{height}}; border: 1px solid #ddd; position: relative; }
  #legend { display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 12px; color: #333; margin-bottom: 6px; }
  .sw { display: inline-block; width: 12px; height: 12px; border-radius: 6px; margin-right: 6px;
        vertical-align: middle; }
  div.vis-tooltip { max-width: 460px; white-space: normal; font-size: 12px; line-height: 1.35; }
  .ctx { margin: 2px 0; color: #333; }
</style>
</head>
<body>
<!--TITLE-->
<!--LEGEND-->
<div id="mynetwork"></div>
<script>
  var nodes, edges, network;
  function asElement(text) {
    var div = document.createElement("div");
    div.innerHTML = text;  // our own escaped HTML: vis-network shows title strings as plain text
    return div;
  }
  function drawGraph() {
    var container = document.getElementById("mynetwork");
    var rawNodes = {{nodes|tojson}};
    var rawEdges = {{edges|tojson}};
    rawNodes.forEach(function (n) { if (typeof n.title === "string") { n.title = asElement(n.title); } });
    rawEdges.forEach(function (e) { if (typeof e.title === "string") { e.title = asElement(e.title); } });
    nodes = new vis.DataSet(rawNodes);
    edges = new vis.DataSet(rawEdges);
    var options = {{options|safe}};
    network = new vis.Network(container, {nodes: nodes, edges: edges}, options);
    var rows = /*ROWS*/[];
    network.on("afterDrawing", function (ctx) {
      var xs = rawNodes.map(function (n) { return n.x; });
      var left = Math.min.apply(null, xs) - 40;
      ctx.font = "12px sans-serif";
      ctx.fillStyle = "#777";
      ctx.textAlign = "right";
      rows.forEach(function (r) { ctx.fillText(r.name, left, r.y + 4); });
    });
    network.fit();
    network.moveTo({scale: network.getScale() * 0.9});  // room for the row names on the left
    return network;
  }
  drawGraph();
</script>
</body>
</html>
"""
