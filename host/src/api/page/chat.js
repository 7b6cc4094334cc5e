// Karta's chat page: talks to the managed-agents routes of the project it
// is served under (/{org}/{project}/), or the flat routes in dev mode (/).
//
// Credentials: `?key=pk_live_…` (an embed key whose allowed origins include
// this page's) is exchanged for a session token at
// POST /v1/embed/session-tokens, with `?identity_token=` when the customer's
// backend vouches for the end user; the token is re-minted before it expires
// and once after a 401. In dev mode (no key) requests carry no credential.
//
// A reload mid-turn loses nothing: the open conversation and the last event
// seen are kept in sessionStorage; on load the page renders the transcript,
// then replays the running turn from the log and follows it.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const match = location.pathname.match(/^\/([a-z0-9-]+)\/([a-z0-9-]+)\/?$/);
  const api = match ? `/${match[1]}/${match[2]}/v1/managed-agents` : "/v1/managed-agents";
  const embedKey = params.get("key");
  const identityToken = params.get("identity_token");
  const endUser = (() => {
    let id = localStorage.getItem("karta.end_user");
    if (!id) {
      const bytes = crypto.getRandomValues(new Uint8Array(12));
      id = "anon-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      localStorage.setItem("karta.end_user", id);
    }
    return id;
  })();

  const $ = (id) => document.getElementById(id);
  const log = $("log");
  const statusLine = $("status");
  const sendButton = $("send");
  const state = {
    session: sessionStorage.getItem("karta.session"),
    cursor: Number(sessionStorage.getItem("karta.cursor") || 0),
    token: null,
    tokenExpires: 0,
    streaming: false,
  };
  if (match) $("title").textContent = `${match[1]}/${match[2]}`;

  function setStatus(text) { statusLine.textContent = text; }
  function remember() {
    if (state.session) sessionStorage.setItem("karta.session", state.session);
    else sessionStorage.removeItem("karta.session");
    sessionStorage.setItem("karta.cursor", String(state.cursor));
  }

  // ---- credentials ----------------------------------------------------
  async function mint() {
    const body = { embed_key: embedKey };
    if (identityToken) body.identity_token = identityToken;
    const answer = await fetch("/v1/embed/session-tokens", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!answer.ok) throw new Error(`cannot start a chat (${answer.status}): ${await answer.text()}`);
    const minted = await answer.json();
    state.token = minted.token;
    state.tokenExpires = Date.now() + (minted.expires_in || 900) * 1000;
  }

  async function headers(json) {
    const h = {};
    if (json) h["content-type"] = "application/json";
    if (embedKey) {
      // Early: a minute before it expires.
      if (!state.token || Date.now() > state.tokenExpires - 60000) await mint();
      h.authorization = `Bearer ${state.token}`;
    }
    return h;
  }

  // fetch with the credential; on a 401, re-mint once and try again.
  async function call(method, path, body) {
    const send = async () => fetch(api + path, {
      method,
      headers: await headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let answer = await send();
    if (answer.status === 401 && embedKey) {
      state.token = null;
      answer = await send();
    }
    if (!answer.ok) {
      let reason = `${answer.status}`;
      try {
        const error = await answer.json();
        reason = error.message || error.reason || error.error || reason;
      } catch (_) { /* not JSON */ }
      throw new Error(reason);
    }
    return answer.status === 204 ? null : answer.json();
  }

  // ---- rendering --------------------------------------------------------
  function bubble(kind, text) {
    const div = document.createElement("div");
    div.className = `msg ${kind}`;
    div.textContent = text;
    log.appendChild(div);
    div.scrollIntoView({ block: "end" });
    return div;
  }

  function toolCard(id, tool, input) {
    let card = log.querySelector(`[data-tool="${CSS.escape(id)}"]`);
    if (card) return card;
    card = document.createElement("div");
    card.className = "tool";
    card.dataset.tool = id;
    const title = document.createElement("strong");
    title.textContent = `Tool: ${tool}`;
    const pre = document.createElement("pre");
    pre.textContent = typeof input === "string" ? input : JSON.stringify(input);
    card.append(title, pre);
    log.appendChild(card);
    return card;
  }

  function approval(entry) {
    const box = document.createElement("div");
    box.className = "approval";
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", `Approve ${entry.tool}?`);
    const text = document.createElement("p");
    text.textContent = `The agent wants to use ${entry.tool}${entry.target ? ` on ${entry.target}` : ""}.`;
    box.appendChild(text);
    const labels = { approve_once: "Allow once", approve_session: "Allow for this chat", deny: "Deny" };
    for (const option of entry.options || ["approve_once", "approve_session", "deny"]) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = labels[option] || option;
      button.dataset.option = option;
      if (option === "deny") button.className = "secondary";
      button.addEventListener("click", async () => {
        box.querySelectorAll("button").forEach((b) => { b.disabled = true; });
        try {
          await call("POST", `/sessions/${state.session}/events`,
            { type: "user.tool_confirmation", request_id: entry.request_id, result: option });
          box.remove();
          follow();
        } catch (e) {
          setStatus(`Could not answer: ${e.message}`);
          box.querySelectorAll("button").forEach((b) => { b.disabled = false; });
        }
      });
      box.appendChild(button);
    }
    log.appendChild(box);
    box.querySelector("button").focus();
  }

  // One log entry of the managed-agents stream.
  function render(entry) {
    switch (entry.type) {
      case "session.status_running":
        setStatus("Working…");
        break;
      case "agent.message": {
        const id = entry.part_id || `m${entry.seq}`;
        let div = log.querySelector(`[data-part="${CSS.escape(id)}"]`);
        if (!div) { div = bubble("agent", ""); div.dataset.part = id; }
        div.textContent += entry.text || "";
        div.scrollIntoView({ block: "end" });
        break;
      }
      case "agent.tool_use":
        toolCard(entry.tool_use_id, entry.tool, entry.input);
        break;
      case "agent.tool_result": {
        const card = toolCard(entry.tool_use_id, entry.tool || "tool", "");
        const out = document.createElement("pre");
        out.textContent = (entry.is_error ? "Error: " : "→ ") +
          (typeof entry.output === "string" ? entry.output : JSON.stringify(entry.output));
        card.appendChild(out);
        const meta = entry._meta || {};
        if (meta.fuel !== undefined) {
          const small = document.createElement("small");
          small.className = "fuel";
          small.textContent = `fuel ${meta.fuel}${meta.duration_ms !== undefined ? ` · ${meta.duration_ms} ms` : ""}`;
          card.appendChild(small);
        }
        break;
      }
      case "session.status_idle":
        if (entry.stop_reason === "requires_action") {
          setStatus("Waiting for your answer");
          approval(entry);
        } else {
          setStatus("");
        }
        break;
      case "session.error":
        bubble("error", entry.message || entry.code || "the turn failed");
        setStatus("");
        break;
      default:
        break;
    }
    if (typeof entry.seq === "number" && entry.seq > state.cursor) {
      state.cursor = entry.seq;
      remember();
    }
  }

  // Follows the session's log after the cursor until the turn pauses or
  // ends (the stream closes then).
  async function follow() {
    if (!state.session || state.streaming) return;
    state.streaming = true;
    sendButton.disabled = true;
    try {
      const url = `${api}/sessions/${state.session}/events/stream?after=${state.cursor}`;
      let answer = await fetch(url, { headers: await headers(false) });
      if (answer.status === 401 && embedKey) {
        state.token = null;
        answer = await fetch(url, { headers: await headers(false) });
      }
      if (!answer.ok || !answer.body) throw new Error(`the stream failed (${answer.status})`);
      const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
          const data = frame.split(/\r?\n/).filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
          if (data) render(JSON.parse(data));
        }
      }
    } catch (e) {
      setStatus(`Connection lost: ${e.message}. Reload to resume.`);
    } finally {
      state.streaming = false;
      sendButton.disabled = false;
    }
  }

  // ---- conversations ----------------------------------------------------
  async function listSessions() {
    const list = $("sessions");
    try {
      const page = await call("GET", `/sessions?end_user=${encodeURIComponent(endUser)}`);
      list.replaceChildren();
      for (const s of page.data || []) {
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = s.title || "Untitled";
        button.title = s.last_activity_at || s.created_at || "";
        if (s.id === state.session) button.setAttribute("aria-current", "true");
        button.addEventListener("click", () => open(s.id));
        li.appendChild(button);
        list.appendChild(li);
      }
    } catch (e) {
      setStatus(`Cannot list conversations: ${e.message}`);
    }
  }

  // Shows a past conversation and, if a turn is running or waiting for an
  // answer, replays it from the log and follows it.
  async function open(id) {
    state.session = id;
    log.replaceChildren();
    const transcript = await call("GET", `/sessions/${id}/transcript?end_user=${encodeURIComponent(endUser)}`);
    for (const m of transcript.messages || []) {
      for (const part of m.parts || []) {
        if (part.type === "text") bubble(m.role === "user" ? "user" : "agent", part.text);
        else if (part.type === "tool") {
          const card = toolCard(`${m.id}-${part.tool}-${log.children.length}`, part.tool, part.input);
          if (part.output !== undefined) {
            const out = document.createElement("pre");
            out.textContent = "→ " + (typeof part.output === "string" ? part.output : JSON.stringify(part.output));
            card.appendChild(out);
          }
        }
      }
    }
    const session = await call("GET", `/sessions/${id}`);
    const events = session.events || [];
    const last = events.length ? events[events.length - 1].seq : 0;
    // The running (or paused) turn: from its last `status_running`.
    let start = -1;
    for (let i = events.length - 1; i >= 0; i--) {
      if (events[i].type === "session.status_running") { start = i; break; }
    }
    const lastEntry = events[events.length - 1];
    const unfinished = start >= 0 && lastEntry &&
      !(lastEntry.type === "session.status_idle" && lastEntry.stop_reason === "end_turn") &&
      lastEntry.type !== "session.error";
    if (unfinished) {
      events.slice(start).forEach(render);
      state.cursor = last;
      remember();
      if (!(lastEntry.type === "session.status_idle" && lastEntry.stop_reason === "requires_action")) follow();
    } else {
      state.cursor = last;
      remember();
      setStatus("");
    }
    listSessions();
  }

  async function send(text) {
    if (!state.session) {
      const created = await call("POST", "/sessions", { metadata: { end_user_id: endUser } });
      state.session = created.id;
      state.cursor = 0;
      remember();
    }
    bubble("user", text);
    await call("POST", `/sessions/${state.session}/events`, { type: "user.message", text });
    setStatus("Working…");
    await follow();
    listSessions();
  }

  $("composer").addEventListener("submit", async (event) => {
    event.preventDefault();
    const box = $("message");
    const text = box.value.trim();
    if (!text || state.streaming) return;
    box.value = "";
    try { await send(text); } catch (e) { bubble("error", e.message); }
  });
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("new-chat").addEventListener("click", () => {
    state.session = null;
    state.cursor = 0;
    remember();
    log.replaceChildren();
    setStatus("");
    $("message").focus();
  });
  $("file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    try {
      if (!state.session) {
        const created = await call("POST", "/sessions", { metadata: { end_user_id: endUser } });
        state.session = created.id;
        remember();
      }
      const bytes = new Uint8Array(await file.arrayBuffer());
      let binary = "";
      for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      const placed = await call("POST", `/sessions/${state.session}/files`,
        { name: file.name, content_base64: btoa(binary) });
      bubble("user", `📎 ${placed.path}`);
      setStatus(`Uploaded ${placed.path}; the agent can read it in your next message.`);
    } catch (e) {
      bubble("error", `Upload failed: ${e.message}`);
    }
    event.target.value = "";
  });

  (async () => {
    try {
      if (state.session) await open(state.session);
      else await listSessions();
    } catch (e) {
      setStatus(e.message);
      state.session = null;
      remember();
    }
  })();
})();
