// The audience's page, /watch/{topic}: it follows a topic's captions, from the server's feed
// (/v1/captions/{topic} as server-sent events) or, with ?broker=ws://..., from an MQTT broker (mqtt.js).
// Finals are kept, each once (by id); each session's partial follows them, its unstable tail dimmed.
// Query: token=, size= (a scale such as 1.5), theme= (dark, light, contrast), overlay=1 (an OBS browser source:
// transparent, the last lines only), lines= (overlay: how many), broker=, prefix=, username=, password=.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const WATCH = "/watch/";
const THEMES = ["dark", "light", "contrast"];
const SCALE_STEP = 1.2;
const MIN_SCALE = 0.5;
const MAX_SCALE = 4;
const FOLLOW_SLACK_PX = 8; // this close to the bottom still counts as following the newest line
const PARAGRAPH_GAP_S = 1.5; // hack: a pause this long starts a new line (feeds carry no sentence breaks)
const MAX_FINALS = 5_000; // finals kept on the page; the oldest go first (the transcript has them all)
const OVERLAY_FINALS = 12; // enough to fill the overlay's few lines, whatever their length
const RECONNECT_MIN_MS = 1_000;
const RECONNECT_MAX_MS = 30_000;
const STORE = "captioner.watch."; // localStorage keys: size, theme

// The page may sit under a path prefix behind a proxy: the feed is beside /watch/, wherever that is.
const base = location.pathname.slice(0, location.pathname.indexOf(WATCH));
const topic = (() => {
  const raw = location.pathname.slice(base.length + WATCH.length);
  try { return decodeURIComponent(raw); } catch { return raw; } // a stray % is the topic's own
})();
const token = params.get("token") || "";
const overlay = ["1", "true", "yes"].includes(params.get("overlay"));

// ---- following the newest line, unless the viewer scrolled up to read ----

const box = $("captions");
let following = true;

function keepFollowing() {
  if (following) box.scrollTop = box.scrollHeight;
}

function follow() {
  following = true;
  $("newest").hidden = true;
  keepFollowing();
}

// Only scrolling moves the position: new lines (which do not) leave `following` as it was.
box.addEventListener("scroll", () => {
  following = box.scrollHeight - box.scrollTop - box.clientHeight <= FOLLOW_SLACK_PX;
  $("newest").hidden = following;
});
$("newest").onclick = follow;
window.addEventListener("resize", keepFollowing);

// ---- settings: font size and theme, remembered; a query parameter wins for that page ----

function remembered(name) {
  try { return localStorage.getItem(STORE + name); } catch { return null; } // storage may be disabled
}

function remember(name, value) {
  try { localStorage.setItem(STORE + name, value); } catch { /* the setting lasts for this page only */ }
}

let scale = Number(params.get("size") || remembered("size") || 1);
if (!Number.isFinite(scale)) scale = 1;

function setScale(value, store = true) {
  scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, Math.round(value * 100) / 100));
  document.documentElement.style.setProperty("--scale", String(scale));
  if (store) remember("size", String(scale));
  keepFollowing();
}

function defaultTheme() {
  if (matchMedia("(prefers-contrast: more)").matches) return "contrast";
  return matchMedia("(prefers-color-scheme: light)").matches ? "light" : "dark";
}

function setTheme(name, store = true) {
  const theme = THEMES.includes(name) ? name : "dark";
  document.documentElement.dataset.theme = theme;
  $("theme").textContent = `\u25D0 ${theme}`; // a half-filled circle
  $("theme").setAttribute("aria-label", `theme: ${theme} (change)`);
  if (store) remember("theme", theme);
}

setScale(scale, false);
setTheme(params.get("theme") || remembered("theme") || defaultTheme(), false);
if (overlay) {
  document.documentElement.classList.add("overlay");
  const lines = Number(params.get("lines"));
  if (lines >= 1) document.documentElement.style.setProperty("--lines", String(Math.round(lines)));
}
if (topic) {
  $("topic").textContent = topic;
  document.title = `${topic}: live captions`;
}

$("smaller").onclick = () => setScale(scale / SCALE_STEP);
$("larger").onclick = () => setScale(scale * SCALE_STEP);
$("theme").onclick = () => {
  const now = THEMES.indexOf(document.documentElement.dataset.theme);
  setTheme(THEMES[(now + 1) % THEMES.length]);
};

document.addEventListener("keydown", (event) => {
  // Leave the browser's own shortcuts (Ctrl + zooms) and typing in a field alone.
  if (event.ctrlKey || event.metaKey || event.altKey || event.target.closest("input, select, textarea")) return;
  if (event.key === "+" || event.key === "=") setScale(scale * SCALE_STEP);
  else if (event.key === "-" || event.key === "_") setScale(scale / SCALE_STEP);
  else if (event.key === "t" || event.key === "T") $("theme").click();
  else if (event.key === "End") follow();
  else if (event.key === "Escape") $("download").open = false;
  else return;
  event.preventDefault();
});

// ---- downloads: the server's transcript of the topic so far ----

// The address of the topic's feed (path "") or one of its files, with the page's token (EventSource and links
// cannot send an Authorization header).
function captionsUrl(path, fields = {}) {
  const query = new URLSearchParams(token ? { token, ...fields } : fields).toString();
  return `${base}/v1/captions/${encodeURIComponent(topic)}${path}${query ? `?${query}` : ""}`;
}

for (const format of ["txt", "srt", "vtt"]) {
  const link = $(`download-${format}`);
  link.href = captionsUrl(`/transcript.${format}`);
  link.download = `${topic || "captions"}.${format}`;
}

// ---- status: the connection, then whether anyone is speaking ----

const REFUSED = "not allowed: this link's token cannot read this topic";
let connection = "connecting"; // "connecting", "open", "reconnecting", or a refusal
const liveSessions = new Set();
let feedLive = false; // the feed said live when it opened, before any session's own status

function showStatus() {
  let state = connection;
  if (connection === "open") state = liveSessions.size || feedLive ? "live" : "waiting";
  const text = { live: "live", waiting: "waiting for the speaker", reconnecting: "reconnecting" }[state] || state;
  if ($("status").textContent !== text) $("status").textContent = text;
  $("status").dataset.state = state;
}

function setConnection(state) {
  connection = state;
  showStatus();
}

// ---- captions ----

// keys (keyOf) of the finals received: a final comes again after a reconnection, in MQTT's history, or twice
// at QoS 1 (at least once)
const seen = new Set();
const ended = new Set(); // sessions whose status said ended: a retained partial of theirs is stale
const lastSegment = new Map(); // session -> its last final's segment: an older partial is stale
const partials = new Map(); // session -> its partial's <p>
window.__captions = []; // {id, text, at: epoch ms}: when each final reached the page (for tests and checks)

// A final becomes one run per speaker: with diarize, each word has its own (as in app.js).
function runsOf(message) {
  const words = message.words || [];
  if (!words.some((word) => word.speaker)) return [{ speaker: message.speaker, text: message.text }];
  const runs = [];
  for (const word of words) {
    const last = runs[runs.length - 1];
    if (last && last.speaker === word.speaker) last.text += ` ${word.word}`;
    else runs.push({ speaker: word.speaker, text: word.word });
  }
  return runs;
}

function label(speaker) {
  const element = document.createElement("b");
  element.className = "speaker";
  element.textContent = `${speaker}: `;
  return element;
}

// Runs as a <p>; each run with a speaker gets its label, hidden where it repeats the line before (relabel).
function line(runs) {
  const element = document.createElement("p");
  for (const run of runs) {
    if (run.speaker) element.append(label(run.speaker));
    element.append(`${run.text.trim()} `);
  }
  const speakers = runs.map((run) => run.speaker).filter(Boolean);
  element.dataset.first = speakers[0] || "";
  element.dataset.last = speakers[speakers.length - 1] || "";
  return element;
}

function relabel(element) {
  const first = element && element.firstChild;
  if (!first || !first.classList || !first.classList.contains("speaker")) return;
  const before = element.previousElementSibling;
  first.hidden = Boolean(before && before.dataset.last === element.dataset.first && !element.dataset.pause);
}

// What makes a final the same final: its id; without one (an older publisher), its session's segment.
function keyOf(message) {
  if (message.id !== undefined && message.id !== null) return `id:${message.id}`;
  return message.session ? `segment:${message.session}/${message.segment}` : null;
}

// Insert a final's line before `next` (null: at the end). Returns whether it is new.
function addFinal(message, next = null) {
  const key = keyOf(message);
  if (key !== null) {
    if (seen.has(key)) return false;
    seen.add(key);
  }
  const session = message.session ?? "";
  lastSegment.set(session, Math.max(lastSegment.get(session) ?? -1, message.segment ?? -1));
  dropPartial(session, message.segment);
  if (!message.text || !message.text.trim()) return true; // silence: nothing to show
  const element = line(runsOf(message));
  element.dataset.key = key ?? "";
  element.dataset.session = session;
  element.dataset.end = message.end ?? "";
  const before = next ? next.previousElementSibling : $("finals").lastElementChild;
  // A pause, or another session, starts a new paragraph: the label shows again even for the same speaker.
  if (before && (before.dataset.session !== session || message.start - Number(before.dataset.end) > PARAGRAPH_GAP_S)) {
    element.dataset.pause = "1";
    element.classList.add("paragraph");
  }
  $("finals").insertBefore(element, next);
  relabel(element);
  relabel(element.nextElementSibling);
  window.__captions.push({ id: message.id, text: message.text, at: performance.timeOrigin + performance.now() });
  if (window.__captions.length > MAX_FINALS) window.__captions.shift();
  trim();
  return true;
}

function trim() {
  const keep = overlay ? OVERLAY_FINALS : MAX_FINALS;
  while ($("finals").childElementCount > keep) $("finals").firstElementChild.remove();
}

// History (MQTT's retained last finals, for a late joiner) may arrive after some live finals: merge by walking
// it in order, inserting each final not yet shown after the last one of it that is.
function addHistory(finals) {
  let next = $("finals").firstElementChild;
  for (const final of finals) {
    const key = keyOf(final);
    const shown = key !== null && [...$("finals").children].find((element) => element.dataset.key === key);
    if (shown) next = shown.nextElementSibling;
    else addFinal(final, next);
  }
}

function showPartial(message) {
  const session = message.session ?? "";
  if (ended.has(session) || (message.segment ?? 0) <= (lastSegment.get(session) ?? -1)) return; // stale
  if (!message.text || !message.text.trim()) return dropPartial(session);
  const text = message.text.trim();
  let stable = (message.stable || "").trim();
  if (!text.startsWith(stable)) stable = "";
  const words = message.words || [];
  const speaker = message.speaker || (words.length ? words[words.length - 1].speaker : undefined);
  const element = document.createElement("p");
  const last = $("finals").lastElementChild;
  if (speaker && !(last && last.dataset.last === speaker)) element.append(label(speaker));
  const steady = document.createElement("span");
  steady.className = "stable";
  steady.textContent = stable;
  const tail = document.createElement("span");
  tail.className = "unstable";
  tail.textContent = text.slice(stable.length);
  element.append(steady, tail);
  element.dataset.segment = message.segment ?? "";
  const old = partials.get(session);
  if (old) old.replaceWith(element);
  else $("partials").append(element);
  partials.set(session, element);
}

// A session's partial goes when its final comes (of that segment or a later one), or when the session ends.
function dropPartial(session, segment = Infinity) {
  const element = partials.get(session);
  if (element && !(Number(element.dataset.segment) > segment)) {
    element.remove();
    partials.delete(session);
  }
}

function showSessionState(message) {
  const session = message.session ?? "";
  if (message.state === "started") {
    ended.delete(session);
    liveSessions.add(session);
  } else if (message.state === "ended") {
    ended.add(session);
    liveSessions.delete(session);
    dropPartial(session);
    if (!liveSessions.size) feedLive = false;
  }
}

function handle(message) {
  if (!message || typeof message !== "object") return;
  if (message.type === "feed") { // the first message, again after each reconnection
    feedLive = Boolean(message.live);
    liveSessions.clear();
  } else if (message.type === "final") {
    addFinal(message);
  } else if (message.type === "partial") {
    showPartial(message);
    // Someone is speaking (a session that started before the page opened): finals are no sign of that,
    // since a feed replays those of sessions long ended.
    if (!ended.has(message.session ?? "")) liveSessions.add(message.session ?? "");
  } else if (message.type === "status") {
    showSessionState(message);
  } else if (message.type === "history") {
    addHistory(message.finals || []);
  } else if (message.type === "gap") { // a reconnection after longer than the server keeps finals
    const notice = document.createElement("p");
    notice.className = "gap";
    notice.textContent = "(earlier captions are no longer available)";
    $("finals").append(notice);
  }
  showStatus();
  keepFollowing();
}

function parse(text) {
  try { return JSON.parse(text); } catch { return null; } // an empty retained message clears; nothing to show
}

// ---- transports ----

// Server-sent events: EventSource reconnects by itself (with Last-Event-ID) after a dropped connection; a refused
// one (an HTTP error) it gives up on, so that one is retried here with back-off, resuming after the last final.
function followFeed() {
  let lastId = null;
  let retries = 0;
  const open = () => {
    const source = new EventSource(captionsUrl("", lastId === null ? {} : { after: lastId }));
    source.onopen = () => {
      retries = 0;
      setConnection("open");
    };
    source.onmessage = (event) => {
      const message = parse(event.data);
      if (message && message.type === "final" && message.id !== undefined) lastId = message.id;
      handle(message);
    };
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) return setConnection("reconnecting"); // it retries itself
      if (retries === 0) explainRefusal();
      if (connection !== REFUSED) setConnection("reconnecting");
      const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** retries++) * (0.5 + Math.random() / 2);
      setTimeout(open, delay);
    };
  };
  open();
}

// EventSource does not say why it was refused. The topic's transcript is read under the same rules: ask it once,
// so that a link with a wrong or expired token says so instead of reconnecting in silence.
function explainRefusal() {
  fetch(captionsUrl("/transcript.txt"), { cache: "no-store" })
    .then((answer) => { if (answer.status === 401 || answer.status === 403) setConnection(REFUSED); })
    .catch(() => {}); // the server is away: "reconnecting" says it
}

// MQTT: the same messages, on {prefix}/{topic}/final, partial, status and history.
function followBroker(url) {
  const prefix = (params.get("prefix") || "captioner").replace(/\/+$/, "");
  const decoder = new TextDecoder();
  const client = new MqttClient(url, {
    username: params.get("username") || "",
    password: params.get("password") || "",
    onState: (state) => setConnection(state === "connected" ? "open" : state),
    onMessage: (name, payload) => {
      const message = parse(decoder.decode(payload));
      if (message && !message.type) message.type = name.slice(name.lastIndexOf("/") + 1);
      handle(message);
    },
  });
  // history first: a broker sends retained messages in the order of the filters
  client.subscribe(["history", "status", "final", "partial"].map((leaf) => `${prefix}/${topic}/${leaf}`));
}

if (params.get("broker")) followBroker(params.get("broker"));
else followFeed();
