"""The chat page the server shows at ``GET /``: one self-contained HTML page, no external URL.

The page keeps the conversation in the browser and sends all of it, each turn, to
``/v1/chat/completions`` with ``stream: true``, exactly as any OpenAI client would: the server
renders it in the model's chat format. The reply is read from the server-sent events as they
arrive and written into the page token by token; the stop button aborts the fetch, which closes
the connection, which makes the server abort the request (the engine frees its pages). What was
written before the stop stays in the conversation. When the conversation would pass the model's
context (the server answers ``context_length_exceeded``), the oldest exchange leaves it, greyed
out on the page, and the turn is sent again, as the terminal chat does. The sampling settings
(temperature, top-p, top-k, max tokens, seed, a system message, the API key when the server asks
for one) sit beside the conversation.

Hooks for tests and curious readers: ``#prompt`` (the message box), ``#send``, ``#stop``,
``#log`` (one ``.message`` per turn, the assistant's with ``data-state`` ``streaming``,
``done``, ``stopped`` or ``error``; an exchange that left the conversation has ``.left``),
``#model`` (the served model's name).

>>> "<script>" in CHAT_PAGE_HTML and "http://" not in CHAT_PAGE_HTML
True
"""

from __future__ import annotations

__all__ = ["CHAT_PAGE_HTML"]

CHAT_PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gpt_components chat</title>
<style>
  :root { --fg: #1d2330; --muted: #6b7280; --line: #d9dde5; --user: #e8f0fe; --bot: #f6f7f9; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, sans-serif; color: var(--fg); display: flex;
         height: 100vh; }
  main { flex: 1; display: flex; flex-direction: column; min-width: 0; }
  header { padding: 10px 16px; border-bottom: 1px solid var(--line); display: flex;
           gap: 12px; align-items: baseline; }
  header h1 { font-size: 16px; margin: 0; }
  #model { color: var(--muted); font-size: 13px; }
  #log { flex: 1; overflow-y: auto; padding: 16px; display: flex; flex-direction: column;
         gap: 10px; }
  .message { max-width: 80%; padding: 8px 12px; border-radius: 10px; white-space: pre-wrap;
             overflow-wrap: anywhere; }
  .user { align-self: flex-end; background: var(--user); }
  .assistant { align-self: flex-start; background: var(--bot); border: 1px solid var(--line); }
  .assistant[data-state="streaming"]::after { content: "\\258D"; color: var(--muted); }
  .assistant[data-state="stopped"]::after { content: " (stopped)"; color: var(--muted); }
  .assistant[data-state="error"] { border-color: #d33; color: #a11; }
  .left { opacity: 0.45; }  /* left the conversation: past the model's context */
  form { display: flex; gap: 8px; padding: 12px 16px; border-top: 1px solid var(--line); }
  textarea { flex: 1; resize: vertical; min-height: 44px; font: inherit; padding: 8px; }
  button { font: inherit; padding: 6px 14px; }
  aside { width: 250px; border-left: 1px solid var(--line); padding: 12px 16px;
          overflow-y: auto; font-size: 13px; }
  aside label { display: block; margin: 10px 0 2px; color: var(--muted); }
  aside input, aside textarea { width: 100%; font: inherit; padding: 4px; }
</style>
</head>
<body>
<main>
  <header><h1>gpt_components chat</h1><span id="model">connecting&hellip;</span></header>
  <div id="log" aria-live="polite"></div>
  <form id="form">
    <textarea id="prompt" placeholder="Write a message (Enter sends, Shift+Enter: new line)"
              rows="2"></textarea>
    <button id="send" type="submit">Send</button>
    <button id="stop" type="button" disabled>Stop</button>
    <button id="clear" type="button">New chat</button>
  </form>
</main>
<aside>
  <strong>Sampling</strong>
  <label for="temperature">temperature (0: greedy)</label>
  <input id="temperature" type="number" min="0" max="2" step="0.1" value="0.7">
  <label for="top_p">top-p</label>
  <input id="top_p" type="number" min="0.01" max="1" step="0.05" value="1">
  <label for="top_k">top-k (empty: all)</label>
  <input id="top_k" type="number" min="1" step="1" value="">
  <label for="max_tokens">max tokens (empty: the context's rest)</label>
  <input id="max_tokens" type="number" min="1" step="1" value="">
  <label for="seed">seed (empty: random)</label>
  <input id="seed" type="number" min="0" step="1" value="">
  <label for="system">system message</label>
  <textarea id="system" rows="3"></textarea>
  <label for="api_key">API key (if the server asks for one)</label>
  <input id="api_key" type="password" autocomplete="off">
</aside>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const history = [];  // {role, content} of the finished turns
let controller = null;

function headers() {
  const h = {"Content-Type": "application/json"};
  if ($("api_key").value) h["Authorization"] = "Bearer " + $("api_key").value;
  return h;
}

function number(id, integer) {
  const text = $(id).value.trim();
  if (text === "") return undefined;
  return integer ? parseInt(text, 10) : parseFloat(text);
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "message " + role;
  div.textContent = text;
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

async function loadModel() {
  try {
    const reply = await fetch("/v1/models", {headers: headers()});
    const body = await reply.json();
    $("model").textContent = reply.ok ? body.data[0].id : body.error.message;
  } catch (error) {
    $("model").textContent = "no server: " + error;
  }
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
}

async function send(text) {
  history.push({role: "user", content: text});
  addMessage("user", text);
  const out = addMessage("assistant", "");
  out.dataset.state = "streaming";
  controller = new AbortController();
  busy(true);
  let reply = "";
  try {
    let response;
    for (;;) {
      const messages = [...history];
      const system = $("system").value.trim();
      if (system) messages.unshift({role: "system", content: system});
      const body = {messages, stream: true, temperature: number("temperature"),
                    top_p: number("top_p"), top_k: number("top_k", true),
                    max_tokens: number("max_tokens", true), seed: number("seed", true)};
      response = await fetch("/v1/chat/completions", {method: "POST", headers: headers(),
        body: JSON.stringify(body), signal: controller.signal});
      if (response.ok) break;
      const error = (await response.json()).error;
      if (error.code !== "context_length_exceeded" || history.length < 3) {
        throw new Error(error.message);
      }
      // Past the context: the oldest exchange leaves the conversation, as in the terminal.
      history.splice(0, 2);
      const gone = $("log").querySelectorAll(".message:not(.left)");
      gone[0].classList.add("left");
      gone[1].classList.add("left");
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      const events = buffer.split("\\n\\n");
      buffer = events.pop();
      for (const event of events) {
        const data = event.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices) {
          reply += choice.delta.content || "";
        }
        out.textContent = reply;
        $("log").scrollTop = $("log").scrollHeight;
      }
    }
    out.dataset.state = "done";
  } catch (error) {
    if (error.name === "AbortError") {
      out.dataset.state = "stopped";
    } else {
      out.dataset.state = "error";
      out.textContent = reply + (reply ? "\\n" : "") + "error: " + error.message;
    }
  }
  if (out.dataset.state === "error") {
    history.pop();  // a refused turn leaves the conversation as it was
  } else {
    history.push({role: "assistant", content: reply});
  }
  controller = null;
  busy(false);
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("form").requestSubmit();
  }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("clear").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("log").replaceChildren();
});
$("api_key").addEventListener("change", loadModel);
loadModel();
</script>
</body>
</html>
"""
