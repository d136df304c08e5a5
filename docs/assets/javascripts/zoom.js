// Click a figure to see it at full size over the page (the notebooks' figures are wider than the text column);
// a click anywhere or Escape closes it.
document.addEventListener("click", (event) => {
  const open = document.querySelector(".optimjax-zoom");
  if (open) {
    open.remove();
    return;
  }
  const figure = event.target.closest(".md-typeset img");
  if (!figure || figure.closest("a")) return;
  const overlay = document.createElement("div");
  overlay.className = "optimjax-zoom";
  const large = document.createElement("img");
  large.src = figure.src;
  large.alt = figure.alt;
  overlay.appendChild(large);
  document.body.appendChild(overlay);
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") document.querySelector(".optimjax-zoom")?.remove();
});
