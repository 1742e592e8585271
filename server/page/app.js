// The live-caption page: microphone (or a local file at real-time pace) -> AudioWorklet (16 kHz
// s16le) -> WebSocket /v1/stream -> finals, and the open segment's partial with its unstable tail
// styled apart. No build step, no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const finals = []; // {start, end, text, speaker}: one per final, or per run of one speaker's words
let socket = null;
let audio = null; // {context, source, node, stream, element}
let sentAt = []; // [audio seconds sent, performance.now()] for the latency readout
let sentSeconds = 0;

function setState(text, isError = false) {
  $("state").textContent = text;
  $("state").className = isError ? "error" : "";
}

// With diarize=true a final's words carry speakers: it becomes one run per speaker, as the CLI's cues.
function runsOf(message) {
  const words = message.words || [];
  if (!words.length || !words[0].speaker) return [{ start: message.start, end: message.end, text: message.text, speaker: message.speaker }];
  const runs = [];
  for (const word of words) {
    const last = runs[runs.length - 1];
    if (last && last.speaker === word.speaker) { last.text += ` ${word.word}`; last.end = word.end; }
    else runs.push({ start: word.start, end: word.end, text: word.word, speaker: word.speaker });
  }
  return runs;
}

function render(partial) {
  const shown = $("finals");
  shown.replaceChildren();
  let speaker = null;
  for (const f of finals) {
    if (f.speaker && f.speaker !== speaker) {
      if (speaker) shown.append(document.createElement("br"));
      const label = document.createElement("b");
      label.className = "speaker";
      label.textContent = `${f.speaker}: `;
      shown.append(label);
      speaker = f.speaker;
    }
    shown.append(`${f.text} `);
  }
  const box = $("partial");
  box.replaceChildren();
  if (partial) {
    const stable = document.createElement("span");
    stable.className = "stable";
    stable.textContent = partial.stable;
    const rest = document.createElement("span");
    rest.className = "unstable";
    rest.textContent = partial.text.slice(partial.stable.length);
    box.append(stable, rest);
  }
}

function showLag(message) {
  const sent = sentAt.find(([seconds]) => seconds >= message.end);
  if (sent) $("lag").textContent = `lag ${((performance.now() - sent[1]) / 1000).toFixed(2)} s`;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const token = $("token").value.trim();
  const params = new URLSearchParams({ sample_rate: "16000", encoding: "pcm_s16le" });
  if (token) params.set("token", token);
  if ($("language").value) params.set("language", $("language").value);
  if ($("translate").checked) params.set("task", "translate");
  if ($("keywords").value.trim()) params.set("keywords", $("keywords").value.trim());
  if ($("diarize").checked) params.set("diarize", "true");
  const query = params.toString();
  const ws = new WebSocket(`${scheme}://${location.host}/v1/stream?${query}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => setState("connected");
  ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "ready") {
      const keywords = message.keywords ? `, ${message.keywords} keywords` : "";
      const speakers = message.diarize ? ", speakers" : "";
      setState(`live: ${message.model} (${message.language}${keywords}${speakers})`);
    }
    else if (message.type === "partial") { render(message); showLag(message); }
    else if (message.type === "final") {
      if (message.text) finals.push(...runsOf(message));
      render(null);
      showLag(message);
      $("download").disabled = finals.length === 0;
    } else if (message.type === "error") setState(`error: ${message.message}`, true);
    else if (message.type === "done") setState("done");
  };
  ws.onclose = (event) => {
    if (event.code !== 1000 && !$("state").classList.contains("error")) {
      setState(`closed (${event.code}${event.reason ? `: ${event.reason}` : ""})`, event.code !== 1001);
    }
    stopAudio();
  };
  ws.onerror = () => setState("connection failed", true);
  return ws;
}

async function start(getSource) {
  stopAudio();
  finals.length = 0;
  render(null);
  sentAt = [];
  sentSeconds = 0;
  socket = connect();
  const context = new AudioContext();
  await context.audioWorklet.addModule("worklet.js");
  const { source, stream, element } = await getSource(context);
  const node = new AudioWorkletNode(context, "capture");
  node.port.onmessage = (event) => {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(event.data);
      sentSeconds += event.data.byteLength / 2 / 16000;
      sentAt.push([sentSeconds, performance.now()]);
      if (sentAt.length > 600) sentAt.shift();
    }
  };
  source.connect(node);
  audio = { context, source, node, stream, element };
  $("stop").disabled = false;
}

function stopAudio() {
  if (!audio) return;
  audio.source.disconnect();
  audio.node.disconnect();
  if (audio.stream) audio.stream.getTracks().forEach((t) => t.stop());
  if (audio.element) audio.element.pause();
  audio.context.close();
  audio = null;
  $("stop").disabled = true;
}

function end() {
  stopAudio();
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "end" }));
}

$("mic").onclick = () => start(async (context) => {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
  return { source: context.createMediaStreamSource(stream), stream };
}).catch((e) => setState(`microphone: ${e.message}`, true));

$("file").onchange = () => {
  const file = $("file").files[0];
  if (!file) return;
  start(async (context) => {
    const element = new Audio(URL.createObjectURL(file)); // plays at real-time pace
    element.onended = () => setTimeout(end, 300);
    const source = context.createMediaElementSource(element);
    await element.play();
    return { source, element };
  }).catch((e) => setState(`file: ${e.message}`, true));
};

$("stop").onclick = end;

function stamp(seconds, separator) {
  const ms = Math.round(seconds * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(Math.floor(ms / 3600000))}:${pad(Math.floor(ms / 60000) % 60)}:${pad(Math.floor(ms / 1000) % 60)}${separator}${pad(ms % 1000, 3)}`;
}

$("download").onclick = () => {
  const format = $("format").value;
  const said = (f) => (f.speaker ? `${f.speaker}: ${f.text}` : f.text); // a speaker's cue starts with its label
  let body;
  if (format === "txt") body = finals.map(said).join("\n") + "\n";
  else if (format === "srt") body = finals.map((f, i) => `${i + 1}\n${stamp(f.start, ",")} --> ${stamp(f.end, ",")}\n${said(f)}\n`).join("\n");
  else body = "WEBVTT\n\n" + finals.map((f) => `${stamp(f.start, ".")} --> ${stamp(f.end, ".")}\n${f.speaker ? `<v ${f.speaker}>` : ""}${f.text}\n`).join("\n");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([body], { type: "text/plain" }));
  link.download = `captions.${format}`;
  link.click();
};
