// Shows the client-side route and the API's answer.
document.getElementById("path").textContent = "route: " + location.pathname;
fetch("/api/hello")
  .then((r) => r.text())
  .then((t) => { document.getElementById("api").textContent = t; })
  .catch((e) => { document.getElementById("api").textContent = "error: " + e; });
