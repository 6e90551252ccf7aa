// The presenter view (balance.app.lecture.presenter_page): the speaker's notes of the step the audience window
// shows, the next step's title and a timer. It follows the audience window live (same browser: a
// BroadcastChannel, and localStorage for where it stands when this view opens); its own keys (the same as the
// audience window's) move the audience window.

const CHANNEL = "balance-lecture";
const STORED = "balance.lecture.step";

function clock(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const two = (v) => String(v).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(r)}` : `${two(m)}:${two(r)}`;
}

function render(view, steps, n) {
  const step = steps[n - 1];
  if (!step) return;
  view.root.dataset.step = String(n);
  view.number.textContent = `Step ${n} of ${steps.length}`;
  view.title.textContent = step.title;
  view.notes.textContent = step.notes || "(no notes for this step)";
  const next = steps[n];
  view.next.textContent = next ? `Next: ${next.number}. ${next.title}` : "Last step";
}

export default function (component) {
  const { data, parentElement } = component;
  if (parentElement.querySelector(".presenter")) return;  // built once; it lives on its own from here
  const root = document.createElement("div");
  root.className = "presenter";
  root.innerHTML = `
    <div class="bar"><span class="number"></span><span class="status">waiting for the audience window…</span>
      <span class="timer" title="time since this view opened"><b class="total">00:00</b>
        <small>this step <span class="here">00:00</span></small></span>
      <button type="button" class="reset">Reset timer</button></div>
    <h1 class="title"></h1><p class="notes"></p><p class="next"></p>`;
  parentElement.appendChild(root);
  const q = (selector) => root.querySelector(selector);
  const view = { root, number: q(".number"), title: q(".title"), notes: q(".notes"), next: q(".next") };
  const steps = data.steps;
  let start = Date.now(), stepStart = Date.now(), current = 0;
  const show = (n) => {
    if (n !== current) stepStart = Date.now();
    current = n;
    render(view, steps, n);
    q(".status").textContent = "following the audience window";
    root.dataset.following = "1";
  };
  q(".reset").addEventListener("click", () => { start = Date.now(); stepStart = Date.now(); });
  setInterval(() => {
    q(".total").textContent = clock(Date.now() - start);
    q(".here").textContent = clock(Date.now() - stepStart);
  }, 250);
  render(view, steps, 1);
  try {
    const stored = JSON.parse(localStorage.getItem(STORED) || "null");
    if (stored && stored.step) show(stored.step);
  } catch (e) { /* nothing stored yet */ }
  if (!("BroadcastChannel" in window)) return;
  const channel = new BroadcastChannel(CHANNEL);
  channel.onmessage = (message) => {
    const m = message.data || {};
    if (m.type === "step") show(m.step);
  };
  channel.postMessage({ type: "hello" });
  const moves = { ArrowRight: 1, PageDown: 1, " ": 1, Enter: 1, ArrowLeft: -1, PageUp: -1, Backspace: -1 };
  window.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    let to = null;
    if (event.key in moves) to = (current || 1) + moves[event.key];
    else if (event.key === "Home") to = 1;
    else if (event.key === "End") to = steps.length;
    else return;
    event.preventDefault();
    channel.postMessage({ type: "go", to: Math.min(Math.max(to, 1), steps.length) });
  }, true);
}
