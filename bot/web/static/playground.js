/* The playground page: a WeChat-like group chat with the bot, fed by server-sent events. */
"use strict";

const pg = { cfg: null, me: null, seen: new Set(), events: [], jobs: [], image: null };

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
  if (ev.image_url) {
    body.classList.add("media");
    body.append(el("img", { src: ev.image_url, alt: "图片", class: "chat-image" }));
  }
  if (ev.video_url) {
    body.classList.add("media");
    const video = el("video", {
      src: ev.video_url, poster: ev.cover_url, controls: true, muted: true, autoplay: true, playsinline: true,
      preload: "auto", class: "chat-video", "data-job": ev.job_id,
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
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  box.append(renderEvent(ev));
  if (atBottom || ev.sender_id === pg.me) box.scrollTop = box.scrollHeight;
}

function rerender() {
  const box = document.getElementById("messages");
  box.replaceChildren(...pg.events.map(renderEvent));
  box.scrollTop = box.scrollHeight;
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

async function send(event) {
  if (event) event.preventDefault();
  const input = document.getElementById("text");
  const text = input.value;
  if (!text.trim() && !pg.image) return;
  const form = new FormData();
  form.append("user_id", pg.me);
  form.append("text", text);
  if (pg.image) form.append("image", pg.image, pg.image.name || "image.png");
  const button = document.getElementById("send");
  button.disabled = true;
  try {
    const res = await fetch("/api/send", { method: "POST", body: form });
    const data = await res.json().catch(() => ({ ok: false, error: `HTTP ${res.status}` }));
    if (!res.ok || !data.ok) {
      toast(data.error || `发送失败（HTTP ${res.status}）`, "error");
      return;
    }
    input.value = "";
    setImage(null);
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
  document.getElementById("image-input").addEventListener("change", (e) => setImage(e.target.files[0] || null));
  document.getElementById("preview-clear").addEventListener("click", () => setImage(null));
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
