// A Plotly chart that updates in place: the Explore page's live charts (balance.ui.live_chart).
//
// st.plotly_chart gives a chart a new element id whenever its figure changes, so every refresh unmounts and
// redraws each chart from scratch (and throws away the user's zoom). This component keeps one <div> per key and
// hands each new figure to Plotly.react, which redraws only what changed and keeps the view (layout.uirevision).
// plotly.js comes from the app's own static folder (app/static/plotly.min.js), or the page's if already loaded.

const SOURCE = "app/static/plotly.min.js";

function loadPlotly() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!window.__balancePlotly) {
    window.__balancePlotly = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = new URL(SOURCE, document.baseURI).href;
      script.onload = () => resolve(window.Plotly);
      script.onerror = () => {
        window.__balancePlotly = undefined; // let a later refresh try again
        reject(new Error(`could not load ${script.src}`));
      };
      document.head.appendChild(script);
    });
  }
  return window.__balancePlotly;
}

export default function (component) {
  const { data, parentElement } = component;
  let div = parentElement.querySelector("div.balance-chart");
  if (!div) {
    div = document.createElement("div");
    div.className = "balance-chart";
    div.style.width = "100%";
    parentElement.appendChild(div);
  }
  const figure = JSON.parse(data.figure);
  loadPlotly()
    .then((Plotly) => Plotly.react(div, figure.data, figure.layout, data.config))
    .catch((error) => {
      div.textContent = `This chart could not be drawn: ${error.message}`;
    });
}
