"""The local web playground (a browser "group chat" with the bot) and the admin dashboard.

* `bot.web.channel.PlaygroundChannel` implements `bot.channel.Channel`: the real router, plugins,
  quotas, queue, worker and delivery loop run unchanged; only the transport is a web page.
* `bot.web.server.create_app` builds the Starlette app from its dependencies (`WebDeps`).
* `bot.web.dashboard` adds the token-protected admin dashboard to it.
* `bot.web.runner.run_playground` wires `bot.app.App` + the web app + uvicorn (`xiaoai playground`).
* `bot.web.admin.AdminConsole`: the same dashboard on the real bot (`xiaoai run`), with `/healthz` and
  `/metrics` (`bot.web.metrics`), in the bot's own event loop.
"""
