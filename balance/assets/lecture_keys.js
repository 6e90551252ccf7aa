// The Lecture page's keys, from any focus: a lecturer's clicker and keyboard (balance.app.lecture).
//
// Right / PageDown / Space / Enter: next step; Left / PageUp / Backspace: previous; Home / End: first / last;
// F: full screen (the app's header hides there). Handled on the window in the capture phase, so a focused button,
// link or slider does not see them first: a slider keeps its arrow keys only while the pointer is dragging it.
// The step goes to the server as a trigger value ("go"). The step shown is published to the presenter view
// (localStorage and a BroadcastChannel, same browser); the presenter view's keys come back the same way.

const CHANNEL = "balance-lecture";
const STORED = "balance.lecture.step";
const NEXT = new Set(["ArrowRight", "PageDown", " ", "Spacebar", "Enter"]);
const PREVIOUS = new Set(["ArrowLeft", "PageUp", "Backspace"]);

function state() {
  if (!window.__balanceLecture) {
    const s = { step: 1, total: 1, shown: 1, dragging: false, go: null, channel: null };
    window.__balanceLecture = s;
    window.addEventListener("keydown", (event) => onKey(s, event), true);
    window.addEventListener("pointerdown", (event) => {
      s.dragging = Boolean(event.target.closest && event.target.closest('[data-testid="stSlider"]'));
    }, true);
    for (const name of ["pointerup", "pointercancel", "blur"]) {
      window.addEventListener(name, () => { s.dragging = false; }, true);
    }
    if ("BroadcastChannel" in window) {
      s.channel = new BroadcastChannel(CHANNEL);
      s.channel.onmessage = (message) => {
        const m = message.data || {};
        if (m.type === "go") go(s, m.to);
        if (m.type === "hello") publish(s);  // a presenter view opened: tell it where we are
      };
    }
  }
  return window.__balanceLecture;
}

function typing(target) {
  if (!target || !target.tagName) return false;
  if (target.isContentEditable) return true;
  return ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName) && target.type !== "range";
}

function toggleFullScreen() {
  const root = document.documentElement;
  if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
  else if (root.requestFullscreen) root.requestFullscreen().catch(() => {});
}

function go(s, to) {
  const n = Math.min(Math.max(Math.round(Number(to)), 1), s.total);
  if (!Number.isFinite(n) || n === s.step || !s.go) return;
  s.step = n;  // at once, so a second press before the server answers moves on from here
  s.go("go", n);
}

function onKey(s, event) {
  if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing || typing(event.target)) return;
  const key = event.key;
  if (s.dragging && key.startsWith("Arrow")) return;  // the slider being dragged keeps its arrows
  let to = null;
  if (NEXT.has(key)) to = s.step + 1;
  else if (PREVIOUS.has(key)) to = s.step - 1;
  else if (key === "Home") to = 1;
  else if (key === "End") to = s.total;
  else if (key === "f" || key === "F") {
    event.preventDefault();
    event.stopPropagation();
    toggleFullScreen();
    return;
  } else return;
  event.preventDefault();  // no page scroll, no button press, no slider move
  event.stopPropagation();
  go(s, to);
}

function publish(s) {
  const message = { type: "step", step: s.shown, total: s.total, at: Date.now() };
  try { localStorage.setItem(STORED, JSON.stringify(message)); } catch (e) { /* private mode: the channel still works */ }
  if (s.channel) s.channel.postMessage(message);
}

export default function (component) {
  const { data, setTriggerValue } = component;
  const s = state();
  s.go = setTriggerValue;
  s.total = data.total;
  s.step = data.step;
  s.shown = data.step;
  document.documentElement.dataset.balanceStep = String(data.step);  // for tests: the step the keys act on
  publish(s);
}
