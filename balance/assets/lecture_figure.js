// A lecture step's figure (balance.app.lecture): drawn by plotly.js at the height left on the screen, so a step
// (text, formulas, figure, controls) fits the window with no scrolling, and a larger screen gets a larger figure.
// The modebar saves the figure for slides with its step's name: the camera as PNG at twice the size, the extra
// button as SVG. plotly.js comes from the app's own static folder (app/static/plotly.min.js): no CDN.

const SOURCE = "app/static/plotly.min.js";
const MIN_HEIGHT = 240;
const MAX_ASPECT = 0.8;  // at most 0.8 x the width: a tall narrow window keeps a figure, not a column

function loadPlotly() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!window.__balancePlotly) {
    window.__balancePlotly = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = new URL(SOURCE, document.baseURI).href;
      script.onload = () => resolve(window.Plotly);
      script.onerror = () => {
        window.__balancePlotly = undefined;
        reject(new Error(`could not load ${script.src}`));
      };
      document.head.appendChild(script);
    });
  }
  return window.__balancePlotly;
}

// The height that makes the page end at the bottom of the window: the scrolling container's height minus
// everything but this figure.
function fittedHeight(div) {
  const scroller = document.querySelector('[data-testid="stMain"]') || document.scrollingElement;
  const block = document.querySelector('[data-testid="stMainBlockContainer"]');
  if (!scroller || !block) return null;
  const used = block.getBoundingClientRect().bottom - scroller.getBoundingClientRect().top + scroller.scrollTop;
  const free = scroller.clientHeight - used;
  const now = div.getBoundingClientRect().height;
  const wanted = Math.floor(now + free);
  return Math.max(MIN_HEIGHT, Math.min(wanted, Math.floor(div.clientWidth * MAX_ASPECT)));
}

function fit(Plotly, div) {
  if (!div.isConnected || !div._fullLayout) return;
  const height = fittedHeight(div);
  if (height !== null && Math.abs(height - div._fullLayout.height) > 2) {
    Plotly.relayout(div, { height });
  }
  div.dataset.fitted = "1";
}

export default function (component) {
  const { data, parentElement } = component;
  let div = parentElement.querySelector("div.balance-lecture-figure");
  if (!div) {
    div = document.createElement("div");
    div.className = "balance-lecture-figure";
    div.style.width = "100%";
    parentElement.appendChild(div);
  }
  div.dataset.fitted = "";
  div.dataset.name = data.filename;
  const figure = JSON.parse(data.figure);
  loadPlotly()
    .then((Plotly) => {
      const svg = {
        name: "svg",
        title: "Download as SVG (for slides)",
        icon: Plotly.Icons.disk,
        click: (gd) => Plotly.downloadImage(gd, { format: "svg", filename: data.filename }),
      };
      const config = {
        displaylogo: false,
        responsive: true,
        toImageButtonOptions: { format: "png", scale: 2, filename: data.filename },
        modeBarButtonsToAdd: [svg],
      };
      // a redraw starts at the height fitted last, not the default: no jump while the next step draws
      const height = div._fullLayout ? div._fullLayout.height : figure.layout.height;
      const layout = { ...figure.layout, height, autosize: true };
      const first = !div._fullLayout;
      return Plotly.react(div, figure.data, layout, config).then(() => {
        fit(Plotly, div);
        if (first) {
          // the text, the footer and the window can change size after the figure is drawn
          const again = () => requestAnimationFrame(() => fit(Plotly, div));
          window.addEventListener("resize", again);
          document.addEventListener("fullscreenchange", again);
          const block = document.querySelector('[data-testid="stMainBlockContainer"]');
          if (block && "ResizeObserver" in window) new ResizeObserver(again).observe(block);
        }
      });
    })
    .catch((error) => {
      div.textContent = `This chart could not be drawn: ${error.message}`;
    });
}
