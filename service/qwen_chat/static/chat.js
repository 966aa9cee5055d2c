// The qwen-chat page: one WebSocket to /ws, authenticated with the `qwen-chat.bearer.<key>` subprotocol.
// Model text is only ever inserted with textContent, never as HTML.
"use strict";

const KEY_STORAGE = "qwen-chat.key";
const RECONNECT_MAX_MS = 15000;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), notice: $("notice"), log: $("log"),
  connectForm: $("connect"), key: $("key"), connect: $("connect-button"), disconnect: $("disconnect-button"),
  composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"), newChat: $("new-chat"),
  temperature: $("temperature"), temperatureValue: $("temperature-value"), maxNewTokens: $("max-new-tokens"),
};

const state = {
  socket: null,
  key: "",
  opened: false,       // the current socket reached `open`
  wanted: false,       // the user wants to be connected (reconnect after a loss)
  backoffMs: 1000,
  reconnectTimer: null,
  transcript: [],      // [{role, content}] of finished turns, kept across reconnects
  reply: null,         // the reply being streamed: {element, text, id, userText}
  nextId: 1,
};

function b64url(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function setStatus(text, kind) {
  ui.status.textContent = text;
  ui.status.dataset.state = kind;
}

function showNotice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
}

function updateControls() {
  const online = state.socket !== null && state.socket.readyState === WebSocket.OPEN;
  const streaming = state.reply !== null;
  ui.prompt.disabled = !online || streaming;
  ui.send.disabled = !online || streaming;
  ui.stop.disabled = !online || !streaming;
  ui.newChat.disabled = !online || streaming;
  ui.connect.hidden = state.wanted;
  ui.disconnect.hidden = !state.wanted;
  ui.key.disabled = state.wanted;
}

function followNewest() {
  ui.log.scrollTop = ui.log.scrollHeight;
}

function addMessage(role, text) {
  const element = document.createElement("article");
  element.className = `msg ${role}`;
  element.setAttribute("aria-label", role === "user" ? "You" : "Assistant");
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  const meta = document.createElement("div");
  meta.className = "meta";
  element.append(body, meta);
  ui.log.append(element);
  followNewest();
  return element;
}

// A thinking model's thinking (`reasoning` frames), folded away above its answer.
function showThinking(reply, text) {
  let details = reply.element.querySelector("details.thinking");
  if (!details) {
    details = document.createElement("details");
    details.className = "thinking";
    const summary = document.createElement("summary");
    summary.textContent = "Thinking";
    const thoughts = document.createElement("div");
    thoughts.className = "thoughts";
    details.append(summary, thoughts);
    reply.element.prepend(details);
    reply.thinking = "";
  }
  reply.thinking += text;
  details.querySelector(".thoughts").textContent = reply.thinking;
}

function setMeta(element, text) {
  element.querySelector(".meta").textContent = text;
}

// Connection.

function connect() {
  clearTimeout(state.reconnectTimer);
  state.opened = false;
  setStatus("Connecting…", "offline");
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  let socket;
  try {
    socket = new WebSocket(url, ["qwen-chat.v1", `qwen-chat.bearer.${b64url(state.key)}`]);
  } catch (error) {
    setStatus("Not connected", "error");
    showNotice(`Cannot open a connection: ${error.message}`);
    return;
  }
  state.socket = socket;
  socket.addEventListener("open", () => {
    state.opened = true;
    state.backoffMs = 1000;
    setStatus("Connected", "online");
    showNotice("");
    updateControls();
    ui.prompt.focus();
  });
  socket.addEventListener("message", (event) => handleFrame(event.data));
  socket.addEventListener("close", (event) => handleClose(socket, event));
  updateControls();
}

async function handleClose(socket, event) {
  if (socket !== state.socket) return;
  const wasOpen = state.opened;
  state.socket = null;
  if (state.reply) failReply("The connection was lost before the reply finished.");
  updateControls();
  if (!state.wanted) {
    setStatus("Not connected", "offline");
    return;
  }
  if (!wasOpen) {
    // A refused handshake looks like any other failure to a browser: ask the server what it thinks of the key.
    const verdict = await checkKey();
    if (verdict === "rejected") {
      giveUp("That key was not accepted. Check it and connect again.");
      return;
    }
  }
  if (event.code === 1008) {
    giveUp("The server closed the connection: your key is no longer valid.");
    return;
  }
  const reason =
    event.code === 1001 ? "The server is restarting."
    : event.code === 1013 ? "This key has too many connections open (other tabs or programs)."
    : "The connection was lost.";
  const seconds = Math.round(state.backoffMs / 1000);
  setStatus(`Reconnecting in ${seconds} s…`, "error");
  showNotice(`${reason} Reconnecting in ${seconds} s; your conversation stays here.`);
  state.reconnectTimer = setTimeout(connect, state.backoffMs);
  state.backoffMs = Math.min(state.backoffMs * 2, RECONNECT_MAX_MS);
}

async function checkKey() {
  try {
    const response = await fetch("/whoami", { headers: { Authorization: `Bearer ${state.key}` }, cache: "no-store" });
    if (response.status === 401 || response.status === 403) return "rejected";
    return response.ok ? "accepted" : "unknown";
  } catch {
    return "unreachable";
  }
}

function giveUp(message) {
  state.wanted = false;
  clearTimeout(state.reconnectTimer);
  setStatus("Not connected", "error");
  showNotice(message);
  updateControls();
}

function disconnect() {
  state.wanted = false;
  clearTimeout(state.reconnectTimer);
  if (state.socket) state.socket.close(1000, "bye");
  state.socket = null;
  setStatus("Not connected", "offline");
  updateControls();
}

// Chat.

function send(frame) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(frame));
    return true;
  }
  return false;
}

function sendChat() {
  const text = ui.prompt.value;
  if (!text.trim() || state.reply) return;
  const id = `m${state.nextId++}`;
  const messages = [...state.transcript, { role: "user", content: text }];
  const params = {
    temperature: Number(ui.temperature.value),
    max_new_tokens: Math.max(1, Math.round(Number(ui.maxNewTokens.value) || 1)),
  };
  // The page keeps the conversation itself and sends all of it, so a reconnect loses nothing.
  if (!send({ type: "chat", id, messages, params })) return;
  showNotice("");
  addMessage("user", text);
  const element = addMessage("assistant", "");
  setMeta(element, "Sending…");
  state.reply = { element, text: "", id, userText: text };
  ui.prompt.value = "";
  updateControls();
}

function finishReply(frame) {
  const reply = state.reply;
  const finished = frame.finish_reason;
  state.transcript.push({ role: "user", content: reply.userText });
  if (reply.text) state.transcript.push({ role: "assistant", content: reply.text });
  else state.transcript.pop();
  const timing = frame.timing || {};
  const parts = [
    `${frame.usage.completion_tokens} tokens`,
    `${Math.round(timing.ttft_ms)} ms to first token`,
    `${Math.round(timing.tokens_per_second)} tokens/s`,
  ];
  if (finished === "cancelled") parts.push("stopped");
  if (finished === "length") parts.push("cut at the token limit");
  if (finished === "timeout") parts.push("cut at the time limit");
  setMeta(reply.element, parts.join(" · "));
  reply.element.dataset.finishReason = finished;
  reply.element.dataset.promptTokens = String(frame.usage.prompt_tokens);
  state.reply = null;
  updateControls();
  ui.prompt.focus();
}

function failReply(message) {
  const reply = state.reply;
  state.reply = null;
  reply.element.classList.add("failed");
  setMeta(reply.element, message);
  // Lose nothing: the unanswered message goes back into the input.
  if (!ui.prompt.value) ui.prompt.value = reply.userText;
  updateControls();
}

const ERROR_TEXT = {
  rate_limited: (f) => `You are sending messages too fast. Try again in ${Math.ceil(f.retry_after ?? 1)} s.`,
  overloaded: (f) => `The server is busy. Try again in ${Math.ceil(f.retry_after ?? 1)} s.`,
  too_long: () => "That message is too long for this model. Shorten it or start a new chat.",
  busy: () => "A reply is still streaming. Wait for it or press Stop.",
  bad_request: (f) => `The server could not use that message: ${f.message}`,
  internal: () => "Something went wrong on the server. Try again.",
};

function handleFrame(data) {
  let frame;
  try {
    frame = JSON.parse(data);
  } catch {
    return;
  }
  const reply = state.reply;
  const mine = reply && frame.id === reply.id;
  switch (frame.type) {
    case "start":
      if (mine) setMeta(reply.element, frame.queue_position > 0 ? `Waiting in line: position ${frame.queue_position}` : "Thinking…");
      break;
    case "reasoning":
      if (mine) {
        showThinking(reply, frame.text);
        setMeta(reply.element, "Thinking…");
        followNewest();
      }
      break;
    case "token":
      if (mine) {
        reply.text += frame.text;
        reply.element.querySelector(".text").textContent = reply.text;
        setMeta(reply.element, "Streaming…");
        followNewest();
      }
      break;
    case "done":
      if (mine) finishReply(frame);
      break;
    case "error": {
      const text = (ERROR_TEXT[frame.code] || ((f) => f.message))(frame);
      showNotice(text);
      if (mine) {
        reply.element.remove();
        state.reply = null;
        // The user message bubble of a refused chat goes too; its text returns to the input.
        const last = ui.log.lastElementChild;
        if (last && last.classList.contains("user")) last.remove();
        ui.prompt.value = reply.userText;
        updateControls();
      }
      break;
    }
  }
}

function newChat() {
  send({ type: "reset" });
  state.transcript = [];
  ui.log.replaceChildren();
  showNotice("");
  ui.prompt.focus();
}

// Wiring.

ui.connectForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.key.value.trim();
  if (!key) return;
  state.key = key;
  sessionStorage.setItem(KEY_STORAGE, key);
  state.wanted = true;
  showNotice("");
  connect();
});
ui.disconnect.addEventListener("click", disconnect);
ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  sendChat();
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendChat();
  }
});
ui.stop.addEventListener("click", () => state.reply && send({ type: "cancel", id: state.reply.id }));
ui.newChat.addEventListener("click", newChat);
window.addEventListener("resize", followNewest);
ui.temperature.addEventListener("input", () => { ui.temperatureValue.textContent = ui.temperature.value; });

const savedKey = sessionStorage.getItem(KEY_STORAGE);
if (savedKey) {
  ui.key.value = savedKey;
  state.key = savedKey;
  state.wanted = true;
  connect();
}
updateControls();
