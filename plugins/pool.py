"""`/pool` (`/资源池`, admins only): the generation pool — executor, cluster state, and per actor its
node, GPU, model and variants, the job it runs, jobs done and mean generation time."""

from __future__ import annotations

from bot.executors.base import PoolView, pool_notice
from bot.executors.status import ActorStatus
from bot.jobs.models import JobState
from bot.plugin import CommandCall, Plugin, PluginContext, command

STATE_TEXT = {"starting": "启动中（加载模型/等待资源）", "idle": "空闲", "busy": "生成中", "dead": "已停止，等待重建"}
CLUSTER_TEXT = {"connecting": "连接中", "ready": "正常", "unreachable": "无法连接", "lost": "连接中断", "stopped": "已停止"}
NO_EXECUTOR_TEXT = "本进程没有运行生成执行器（生成由其他进程负责）。"


def device_text(device: str) -> str:
    """Where an actor generates: `CPU`, `GPU 0` (`cuda:0`, or Ray's GPU ids), never "GPU" for a CPU run."""
    device = device.strip()
    if not device or device.startswith("cpu"):  # Ray reports no GPU ids for a CPU-only actor
        return "CPU"
    if device == "auto":
        return "设备：自动选择（模型加载后可知）"
    if device.startswith("cuda"):
        return f"GPU {device.partition(':')[2] or 0}"
    return f"GPU {device}"


def format_actor(a: ActorStatus, now: float) -> str:
    parts = [a.name, STATE_TEXT.get(a.state, a.state)]
    if a.node:
        parts.append(f"节点 {a.node}")
    parts.append(device_text(a.gpu))
    if a.model:
        parts.append(f"模型 {a.model}" + (f"（{'/'.join(a.variants)}）" if a.variants else ""))
    if a.job_id is not None:
        running = f"，已 {max(0, round(now - a.job_started_at))} 秒" if a.job_started_at else ""
        parts.append(f"当前任务 #{a.job_id}{running}")
    mean = f"，平均 {a.mean_s:.1f} 秒" if a.mean_s is not None else ""
    parts.append(f"已完成 {a.jobs_done} 个{mean}")
    if a.state == "dead" and a.error:
        parts.append(f"原因：{a.error[:80]}")
    return " · ".join(parts)


def format_pool(view: PoolView, now: float, counts: dict[str, int]) -> str:
    if view.kind == "ray":
        cluster = view.cluster
        state = CLUSTER_TEXT.get(cluster.state, cluster.state) if cluster else "未知"
        where = f"，地址 {cluster.address}" if cluster and cluster.address else ""
        head = f"生成资源池：Ray 集群{where}，状态 {state}"
        if not view.process_alive:
            head += "（调度进程未运行）"
    else:
        head = "生成资源池：本地工作进程" + ("" if view.process_alive else "（进程未运行，正在重启）")
    lines = [head + "。"]
    if view.actors:
        lines += [format_actor(a, now) for a in view.actors]
    else:
        lines.append("当前没有可用的生成节点。")
    busy = sum(1 for a in view.actors if a.state == "busy")
    lines.append(f"节点 {len(view.actors)} 个，忙碌 {busy} 个；队列：生成中 {counts.get(str(JobState.RUNNING), 0)} 个，"
                 f"排队 {counts.get(str(JobState.QUEUED), 0)} 个。")
    if notice := pool_notice(view):
        lines.append(notice)
    return "\n".join(lines)


class PoolPlugin(Plugin):
    name = "pool"
    description = "生成资源池状态"

    @command("pool", aliases=("资源池",), usage="/资源池", help="查看生成资源池：节点、设备（GPU/CPU）、模型、当前任务、完成数与平均耗时",
             admin_only=True)
    async def pool(self, ctx: PluginContext, call: CommandCall) -> None:
        executor = ctx.executor
        if executor is None:
            await ctx.reply(call.message, NO_EXECUTOR_TEXT)
            return
        view = executor.view()
        await ctx.reply(call.message, format_pool(view, ctx.clock(), ctx.queue.counts()))
