/* The admin dashboard: one JSON state pushed by server-sent events, rendered into plain tables. */
"use strict";

const dash = { state: null };
const ACTION_TEXT = { set: "设置额度", add: "增加额度", reset: "恢复额度", ban: "封禁", unban: "解封", cancel: "取消任务" };

function spec(job) {
  return `${job.resolution} · ${job.duration_s} 秒 · ${job.cost} 点${job.image ? " · 图" : ""}`;
}

function short(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

async function post(path, body) {
  const res = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = await res.json().catch(() => ({ ok: false, error: `HTTP ${res.status}` }));
  if (res.status === 401) location.reload();
  if (!res.ok || !data.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

function cancelButton(job) {
  if (!job.cancellable) return el("span", { class: "muted", title: "已经在停止" }, "");
  return el("button", {
    type: "button", class: "danger small", "data-cancel": job.id,
    onclick: async () => {
      try {
        const data = await post("/api/dashboard/cancel", { job_id: job.id });
        toast(data.message, "ok");
      } catch (e) { toast(e.message, "error"); }
    },
  }, "取消");
}

function renderQueue(s) {
  const counts = s.counts || {};
  document.getElementById("queue-summary").textContent =
    `生成中 ${s.running.length} · 排队 ${s.waiting.length} · 已发送 ${counts.delivered || 0} · 失败 ${counts.failed || 0}`;
  const running = document.getElementById("running");
  if (!s.running.length) {
    running.replaceChildren(el("p", { class: "muted" }, "没有正在生成的任务。"));
  } else {
    running.replaceChildren(...s.running.map((job) => {
      const pct = Math.round(job.progress * 100);
      const bar = el("div", { class: "bar" }, el("div", { class: "fill" }));
      bar.firstChild.style.width = `${pct}%`;
      return el("div", { class: "running-job", "data-job": job.id },
        el("div", { class: "job-line" }, el("b", { text: `#${job.id}` }),
          ` ${job.user_name || job.user_id} · ${spec(job)} · `,
          el("span", { class: "job-status", text: job.cancel_requested ? "正在停止…" : `生成中 ${pct}%` }),
          job.progress_text ? el("span", { class: "muted" }, ` ${job.progress_text}`) : null, " ", cancelButton(job)),
        el("div", { class: "job-prompt muted", text: job.prompt }), bar);
    }));
  }
  const waiting = document.getElementById("waiting");
  waiting.replaceChildren(...(s.waiting.length ? s.waiting.map((job) => el("tr", { "data-job": job.id },
    el("td", { text: job.position }), el("td", { text: `#${job.id}` }),
    el("td", { text: job.user_name || job.user_id }), el("td", { text: short(job.prompt, 40), title: job.prompt }),
    el("td", { text: spec(job) }), el("td", { text: fmtSeconds(job.eta_s) }), el("td", {}, cancelButton(job)),
  )) : [el("tr", {}, el("td", { colspan: 7, class: "muted" }, "没有排队的任务（按公平顺序显示）。"))]));
}

function renderWorker(w) {
  const rows = [
    ["生成器", w.generator === "synthetic" ? "合成测试视频（非模型）" : `Pyramid Flow${w.checkpoint ? "" : "（微型随机权重）"}`],
    ["设备", w.device_label || w.device], ["执行器", w.executor || "本进程未运行"],
    ["进程", w.process_alive === null ? "—" : (w.process_alive ? "运行中" : "未运行（正在重启）")],
  ];
  for (const g of w.gpus || []) rows.push([`GPU ${g.index}`, `${g.name} · ${g.memory_gb} GB`]);
  const list = el("dl", { class: "kv" }, rows.map(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  const actors = (w.actors || []).map((a) => el("div", { class: `actor ${a.state}` },
    el("b", { text: a.name }), ` · ${a.state === "busy" ? "生成中" : a.state === "idle" ? "空闲" : a.state}`,
    a.device_label ? ` · ${a.device_label}` : "", a.model ? ` · ${a.model}` : "",
    a.job_id ? ` · 任务 #${a.job_id}` : "", ` · 已完成 ${a.jobs_done}`,
    a.mean_s ? ` · 平均 ${a.mean_s.toFixed(1)} 秒` : "", a.node ? el("div", { class: "muted", text: a.node }) : null));
  document.getElementById("worker").replaceChildren(list, ...actors, w.error ? el("p", { class: "error", text: w.error }) : "");
}

// Chat channels (the playground's one, or every channel of `xiaoai run`): connected, last message, login.
function renderChannels(list, tz) {
  const box = document.getElementById("channels");
  if (!box || !list) return;
  box.replaceChildren(...list.map((c) => el("div", { class: `actor ${c.connected ? "" : "dead"}`, "data-channel": c.name },
    el("b", { text: c.name }),
    ` · ${c.connected ? "已连接" : c.login_needed ? `需要登录（xiaoai login ${c.name}）` : c.started ? "未连接" : "未启动"}`,
    ` · 最近消息 ${fmtTime(c.last_event, tz)}`,
    c.failure || c.last_error ? el("div", { class: "muted", text: c.failure || c.last_error }) : null)));
}

function renderDaily(days) {
  const W = 420, H = 150, pad = 22, n = days.length;
  const max = Math.max(1, ...days.map((d) => d.ok + d.failed + d.cancelled + d.pending));
  const bw = (W - pad) / n;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H + 20}`, class: "chart", role: "img", "aria-label": "每日任务数" });
  svg.append(svgEl("line", { x1: pad, y1: H, x2: W, y2: H, class: "axis" }));
  const label = svgEl("text", { x: 2, y: 12, class: "tick" });
  label.textContent = String(max);
  svg.append(label);
  days.forEach((d, i) => {
    let y = H;
    for (const key of ["ok", "failed", "cancelled", "pending"]) {
      const h = (d[key] / max) * (H - 16);
      if (h > 0) {
        y -= h;
        const rect = svgEl("rect", { x: pad + i * bw + 2, y, width: bw - 4, height: h, class: `bar-${key}` });
        const title = svgEl("title", {});
        title.textContent = `${d.day} 成功 ${d.ok} 失败 ${d.failed} 取消 ${d.cancelled} 进行中 ${d.pending}`;
        rect.append(title);
        svg.append(rect);
      }
    }
    if (i % 2 === (n - 1) % 2) {
      const t = svgEl("text", { x: pad + i * bw + bw / 2, y: H + 14, class: "tick", "text-anchor": "middle" });
      t.textContent = d.day.slice(5);
      svg.append(t);
    }
  });
  document.getElementById("daily").replaceChildren(svg);
}

function renderUsers(s) {
  const select = document.getElementById("quota-user");
  const current = select.value;
  const ids = s.users.map((u) => u.user_id);
  const options = s.users.map((u) => el("option", { value: u.user_id }, u.name ? `${u.name} (${u.user_id})` : u.user_id));
  const same = select.options.length === ids.length && [...select.options].every((o, i) => o.value === ids[i]);
  if (!same) {
    select.replaceChildren(...options);
    if (ids.includes(current)) select.value = current;
  }
  document.getElementById("users").replaceChildren(...s.users.map((u) => el("tr", {
    "data-user": u.user_id, class: u.banned ? "banned" : "",
    onclick: () => { select.value = u.user_id; },
  },
  el("td", { text: u.name || "—" }), el("td", { class: "mono", text: u.user_id }),
  el("td", { class: "balance", text: u.balance === null ? "—（未出现）" : u.balance }), el("td", { text: u.spent_today }), el("td", { text: u.allowance }),
  el("td", { text: [u.admin ? "管理员" : "", u.banned ? "已封禁" : "正常"].filter(Boolean).join(" · ") }),
  el("td", { text: fmtTime(u.last_seen, s.timezone) }))));
}

function renderRecent(s) {
  document.getElementById("recent").replaceChildren(...s.recent.map((job) => el("tr", { "data-job": job.id, class: job.state },
    el("td", { text: `#${job.id}` }), el("td", { text: fmtTime(job.created_at, s.timezone) }),
    el("td", { text: job.user_name || job.user_id }), el("td", { text: short(job.prompt, 50), title: job.prompt }),
    el("td", { text: spec(job) }),
    el("td", { class: "state", text: STATE_TEXT[job.state] || job.state, title: job.error || "" }),
    el("td", { text: job.seconds === null ? "—" : `${job.seconds} 秒` }),
    el("td", {}, job.video_url ? el("a", { href: job.video_url, target: "_blank", rel: "noopener" }, "播放") : "—"))));
}

function renderAudit(s) {
  document.getElementById("audit").replaceChildren(...(s.audit.length ? s.audit.map((a) => el("tr", {},
    el("td", { text: fmtTime(a.ts, s.timezone) }), el("td", { class: "mono", text: a.actor_id }),
    el("td", { text: ACTION_TEXT[a.action] || a.action }), el("td", { class: "mono", text: a.target_id || "—" }),
    el("td", { text: a.text || JSON.stringify(a.detail) }))) :
    [el("tr", {}, el("td", { colspan: 5, class: "muted" }, "还没有管理操作记录。"))]));
}

function render(s) {
  dash.state = s;
  renderQueue(s);
  renderWorker(s.worker);
  renderChannels(s.channels, s.timezone);
  renderDaily(s.daily);
  renderUsers(s);
  renderRecent(s);
  renderAudit(s);
  document.getElementById("updated").textContent = `更新于 ${fmtTime(s.now, s.timezone)}`;
  document.body.dataset.ready = "1";
}

// The form is checked here first (the server checks again): an empty amount is not 0.
function invalid(id, message) {
  const field = document.getElementById(id);
  field.setAttribute("aria-invalid", "true");
  field.focus();
  toast(message, "error");
  return null;
}

function quotaAmount(op) {
  const field = document.getElementById("quota-value");
  field.removeAttribute("aria-invalid");
  const raw = field.value.trim();
  // a number input reports "" for text it cannot parse: treat both as missing
  if (!raw) return invalid("quota-value", field.validity.badInput ? "数量需要是整数，例如 10。" : "请填写数量，例如 10。");
  if (!/^[+-]?\d+$/.test(raw)) return invalid("quota-value", "数量需要是整数，例如 10。");
  const value = Number(raw);
  if (Math.abs(value) > 100000) return invalid("quota-value", "数量太大了，最多 100000。");
  if (op === "set" && value < 0) return invalid("quota-value", "额度不能设为负数。");
  if (op === "add" && value === 0) return invalid("quota-value", "增加 0 点不会有变化，请填写非 0 的数量（负数为扣减）。");
  return value;
}

async function quotaAction(op) {
  const user_id = document.getElementById("quota-user").value;
  const reason = document.getElementById("quota-reason").value.trim();
  if (!user_id) return toast("请先选择用户。", "error");
  if (reason.length > 200) return invalid("quota-reason", "原因太长了，最多 200 字。");
  const value = op === "reset" ? null : quotaAmount(op);
  if (op !== "reset" && value === null) return;
  try {
    const data = await post("/api/dashboard/quota", { user_id, op, value, reason });
    toast(data.message, "ok");
  } catch (e) { toast(e.message, "error"); }
}

async function banAction(banned) {
  const user_id = document.getElementById("quota-user").value;
  const reason = document.getElementById("quota-reason").value.trim();
  if (!user_id) return toast("请先选择用户。", "error");
  if (reason.length > 200) return invalid("quota-reason", "原因太长了，最多 200 字。");
  try {
    const data = await post("/api/dashboard/ban", { user_id, banned, reason });
    toast(data.message, "ok");
  } catch (e) { toast(e.message, "error"); }
}

async function showLedger() {
  const user_id = document.getElementById("quota-user").value;
  if (!user_id) return toast("请先选择用户。", "error");
  const res = await fetch(`/api/dashboard/ledger/${encodeURIComponent(user_id)}`, { credentials: "same-origin" });
  if (res.status === 401) { location.reload(); return; }
  const data = await res.json().catch(() => ({ ok: false, error: `HTTP ${res.status}` }));
  if (!res.ok || !data.ok) return toast(data.error || `流水读取失败（HTTP ${res.status}）`, "error");
  const tz = dash.state ? dash.state.timezone : undefined;
  const KIND = { grant: "发放", spend: "消耗", refund: "退还", adjust: "调整", reset: "每日重置" };
  const box = document.getElementById("ledger");
  box.classList.remove("hidden");
  box.replaceChildren(el("h3", { text: `${user_id} 的额度流水（当前 ${data.balance} 点）` }),
    el("table", { class: "table" }, el("thead", {}, el("tr", {}, ["时间", "类型", "变动", "余额", "任务", "操作人", "原因"]
      .map((h) => el("th", { text: h })))),
    el("tbody", {}, data.rows.map((r) => el("tr", {}, el("td", { text: fmtTime(r.ts, tz) }),
      el("td", { text: KIND[r.kind] || r.kind }), el("td", { text: (r.delta > 0 ? "+" : "") + r.delta }),
      el("td", { text: r.balance_after }), el("td", { text: r.job_id ? `#${r.job_id}` : "" }),
      el("td", { class: "mono", text: r.actor_id || "" }), el("td", { text: r.reason }))))));
}

async function showSettings() {
  const res = await fetch("/api/dashboard/settings", { credentials: "same-origin" });
  if (!res.ok) { toast(`读取配置失败（HTTP ${res.status}）`, "error"); return; }
  const body = await res.json();
  document.getElementById("secrets").textContent = "密钥：" + Object.entries(body.secrets)
    .map(([name, set]) => `${name} ${set ? "已设置" : "未设置"}`).join("，");
  document.getElementById("settings-json").textContent = JSON.stringify(body.settings, null, 2);
}

async function init() {
  document.getElementById("settings-details").addEventListener("toggle", (e) => {
    if (e.target.open) showSettings().catch((err) => toast(`读取配置失败：${err}`, "error"));
  });
  for (const button of document.querySelectorAll("#quota-form button[data-op]")) {
    button.addEventListener("click", () => quotaAction(button.dataset.op));
  }
  document.getElementById("btn-ban").addEventListener("click", () => banAction(true));
  document.getElementById("btn-unban").addEventListener("click", () => banAction(false));
  document.getElementById("btn-ledger").addEventListener("click", showLedger);
  const res = await fetch("/api/dashboard/state", { credentials: "same-origin" });
  if (res.status === 401 || res.status === 403) { location.reload(); return; }
  render(await res.json());
  const live = document.getElementById("live");
  const source = new EventSource("/api/dashboard/events");
  source.addEventListener("state", (e) => render(JSON.parse(e.data)));
  source.onopen = () => { live.className = "live on"; };
  source.onerror = () => { live.className = "live off"; };
}

init().catch((e) => toast(`加载失败：${e}`, "error"));
