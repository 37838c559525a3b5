/* The playground page: a WeChat-like group chat with the bot, fed by server-sent events. */
"use strict";

const pg = { cfg: null, me: null, seen: new Set(), events: [], jobs: [], image: null, quote: null, stick: true,
  autoTop: -1 };

// The chat stays at its newest message while the reader is there ("stick"): after new messages, after an
// image or video finished loading (they grow the bubble later) and when the box itself shrinks (the job
// list above the input appears). Scrolling up to read older messages turns it off until back at the end.
function nearBottom(box) {
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function keepBottom() {
  const box = document.getElementById("messages");
  if (!pg.stick) return;
  box.scrollTop = box.scrollHeight;
  pg.autoTop = box.scrollTop; // the scroll event this causes is ours, not the reader's
}

function userName(id) {
  if (pg.cfg && id === pg.cfg.bot_id) return pg.cfg.bot_name;
  const u = pg.cfg && pg.cfg.users.find((x) => x.id === id);
  return u ? u.name : id;
}

function textWithMentions(text) {
  const frag = document.createDocumentFragment();
  const parts = text.split(/(@[^\s\u2005\u2006@]+)/);
  for (const part of parts) {
    if (!part) continue;
    if (part.startsWith("@")) frag.append(el("span", { class: "mention", text: part }));
    else frag.append(document.createTextNode(part));
  }
  return frag;
}

function renderEvent(ev) {
  const mine = ev.sender_id === pg.me;
  const isBot = ev.kind !== "user";
  const avatar = el("div", { class: `avatar ${isBot ? "bot" : ""}`, title: ev.sender_name },
    isBot ? "爱" : (ev.sender_name || "?").slice(0, 1));
  const body = el("div", { class: "bubble" });
  if (ev.quote_url) { // a reply quoting an earlier picture
    body.append(el("div", { class: "quote muted" }, "引用 ",
      el("img", { src: ev.quote_url, alt: "被引用的图片", class: "quote-image", onload: keepBottom })));
  }
  if (ev.image_url) {
    body.classList.add("media");
    body.append(el("img", { src: ev.image_url, alt: "图片", class: "chat-image", onload: keepBottom }));
    if (ev.kind === "user") { // quote it: `/视频 提示词` then animates this picture
      body.append(el("button", { type: "button", class: "quote-btn", title: "引用这张图片回复",
        onclick: () => setQuote(ev.image_url) }, "引用"));
    }
  }
  if (ev.video_url) {
    body.classList.add("media");
    const video = el("video", {
      src: ev.video_url, poster: ev.cover_url, controls: true, muted: true, autoplay: true, playsinline: true,
      preload: "auto", class: "chat-video", "data-job": ev.job_id, onloadedmetadata: keepBottom,
      onloadeddata: keepBottom,
    });
    video.muted = true; // the attribute alone does not mute in every browser; autoplay needs muted
    body.append(video);
    body.append(el("a", { href: ev.video_url, download: `xiaoai-${ev.job_id}.mp4`, class: "download" }, "下载 MP4"));
  }
  if (ev.text) body.append(el("div", { class: "text" }, textWithMentions(ev.text)));
  return el("div", { class: `msg ${mine ? "mine" : ""} ${isBot ? "from-bot" : ""}`, "data-kind": ev.kind,
    "data-seq": ev.seq }, avatar,
    el("div", { class: "col" }, el("div", { class: "name", text: ev.sender_name }), body));
}

function addEvent(ev) {
  if (pg.seen.has(ev.seq)) return;
  pg.seen.add(ev.seq);
  pg.events.push(ev);
  const box = document.getElementById("messages");
  if (ev.sender_id === pg.me) pg.stick = true; // what I just sent is always shown
  box.append(renderEvent(ev));
  keepBottom();
}

function rerender() {
  const box = document.getElementById("messages");
  box.replaceChildren(...pg.events.map(renderEvent));
  pg.stick = true;
  keepBottom();
}

function renderJobs(jobs) {
  pg.jobs = jobs;
  const box = document.getElementById("jobs");
  box.replaceChildren(...jobs.map((job) => {
    const pct = Math.round((job.progress || 0) * 100);
    let line;
    if (job.state === "running") {
      line = job.cancel_requested ? "正在停止…" : `生成中 ${pct}%${job.progress_text ? " · " + job.progress_text : ""}`;
    } else {
      line = `排队第 ${job.position} 位 · 预计 ${fmtSeconds(job.eta_s)}后完成`;
    }
    const bar = el("div", { class: "bar" }, el("div", { class: "fill" }));
    bar.firstChild.style.width = `${job.state === "running" ? pct : 0}%`;
    return el("div", { class: `job ${job.state}`, "data-job": job.id },
      el("div", { class: "job-line" },
        el("b", { text: `#${job.id}` }), ` ${job.user_name} · ${job.image ? "图生视频" : "文生视频"} · `,
        el("span", { class: "job-status", text: line })),
      el("div", { class: "job-prompt muted", text: job.prompt }), bar);
  }));
}

function setImage(file) {
  pg.image = file;
  const preview = document.getElementById("preview");
  if (!file) {
    preview.classList.add("hidden");
    document.getElementById("image-input").value = "";
    return;
  }
  if (file.size > pg.cfg.max_upload_bytes) {
    const mb = pg.cfg.max_upload_bytes / 1048576;
    toast(`图片太大了，请选择 ${mb >= 1 ? mb + " MB" : Math.max(1, Math.floor(pg.cfg.max_upload_bytes / 1024)) + " KB"} 以内的图片。`, "error");
    setImage(null);
    return;
  }
  document.getElementById("preview-img").src = URL.createObjectURL(file);
  document.getElementById("preview-name").textContent = file.name;
  preview.classList.remove("hidden");
}

function setQuote(url) {
  pg.quote = url ? url.split("/").pop() : null;
  const box = document.getElementById("quote");
  if (!pg.quote) { box.classList.add("hidden"); return; }
  document.getElementById("quote-img").src = url;
  box.classList.remove("hidden");
  const input = document.getElementById("text");
  if (!input.value.trim()) input.value = "/视频 ";
  input.focus();
}

async function send(event) {
  if (event) event.preventDefault();
  const input = document.getElementById("text");
  const text = input.value;
  if (!text.trim() && !pg.image) return;
  const form = new FormData();
  form.append("user_id", pg.me);
  form.append("text", text);
  if (pg.image) form.append("image", pg.image, pg.image.name || "image.png");
  if (pg.quote && text.trim()) form.append("quote", pg.quote);
  const button = document.getElementById("send");
  button.disabled = true;
  try {
    const res = await fetch("/api/send", { method: "POST", body: form });
    const data = await res.json().catch(() => ({ ok: false, error: `HTTP ${res.status}` }));
    if (!res.ok || !data.ok) {
      let text = data.error || `发送失败（HTTP ${res.status}）`;
      if (data.field === "image" && pg.image) { // a refused picture must not ride along with the next message
        setImage(null);
        text += " 已移除这张图片，可以换一张或直接发文字。";
      }
      if (data.field === "quote") setQuote(null);
      toast(text, "error");
      return;
    }
    if (input.value === text) input.value = ""; // what was typed while this was sending stays
    setImage(null);
    if (text.trim()) setQuote(null);
  } catch (e) {
    toast(`发送失败：${e}`, "error");
  } finally {
    button.disabled = false;
    input.focus();
  }
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/events");
  source.addEventListener("chat", (e) => addEvent(JSON.parse(e.data)));
  source.addEventListener("jobs", (e) => renderJobs(JSON.parse(e.data).jobs));
  source.onopen = () => { live.className = "live on"; live.title = "已连接"; };
  source.onerror = () => { live.className = "live off"; live.title = "正在重连…"; };
}

async function init() {
  pg.cfg = await (await fetch("/api/config")).json();
  document.getElementById("room-name").textContent = pg.cfg.room_name;
  document.getElementById("member-count").textContent = `(${pg.cfg.users.length + 1})`;
  const select = document.getElementById("user-select");
  for (const u of pg.cfg.users) select.append(el("option", { value: u.id }, u.admin ? `${u.name}（管理员）` : u.name));
  const saved = localStorage.getItem("xiaoai-playground-user");
  pg.me = pg.cfg.users.some((u) => u.id === saved) ? saved : pg.cfg.users[0].id;
  select.value = pg.me;
  select.addEventListener("change", () => {
    pg.me = select.value;
    localStorage.setItem("xiaoai-playground-user", pg.me);
    rerender();
  });
  document.getElementById("composer").addEventListener("submit", send);
  const box = document.getElementById("messages");
  box.addEventListener("scroll", () => {
    if (Math.abs(box.scrollTop - pg.autoTop) > 1) pg.stick = nearBottom(box);
  }, { passive: true });
  new ResizeObserver(keepBottom).observe(box);
  document.getElementById("image-input").addEventListener("change", (e) => setImage(e.target.files[0] || null));
  document.getElementById("preview-clear").addEventListener("click", () => setImage(null));
  document.getElementById("quote-clear").addEventListener("click", () => setQuote(null));
  for (const chip of document.querySelectorAll("#chips button")) {
    chip.addEventListener("click", () => {
      const input = document.getElementById("text");
      input.value = chip.dataset.text;
      input.focus();
    });
  }
  connect();
  document.body.dataset.ready = "1";
}

init().catch((e) => toast(`页面加载失败：${e}`, "error"));
