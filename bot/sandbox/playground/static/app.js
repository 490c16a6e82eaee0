// The playground page: channels, threads, the Home tab, the simulator panel and the API log.
// State arrives over server-sent events; everything the page sends goes to /playground/ routes,
// where the server builds and signs the request the bot receives.
(function () {
  "use strict";
  const R = window.KpsRender;
  const $ = (id) => document.getElementById(id);

  const state = {
    config: null,
    messages: new Map(),
    views: {},
    calls: [],
    current: null, // {kind: "channel", id} or {kind: "app", tab: "home" | "messages"}
    thread: null, // {channel, ts}
    logOpen: false,
    lastSeen: {},
    tasks: [],
    stats: null,
    selectedTask: null,
  };
  let renderQueued = false;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function request(method, path, body) {
    const options = { method, headers: {} };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    let data = {};
    try {
      data = await response.json();
    } catch (error) {
      data = {};
    }
    if (!response.ok || data.ok === false) {
      throw new Error(data.error || `The playground answered HTTP ${response.status || data.status}`);
    }
    return data;
  }

  // -- live state ------------------------------------------------------------------------------

  function connect() {
    const source = new EventSource("/playground/events");
    source.onopen = () => $("connection").classList.add("live");
    source.onerror = () => $("connection").classList.remove("live");
    source.onmessage = (event) => handle(JSON.parse(event.data));
  }

  function handle(event) {
    switch (event.type) {
      case "snapshot":
        state.config = event.config;
        state.messages = new Map(event.messages.map((m) => [m.id, m]));
        state.views = event.views || {};
        state.calls = event.calls || [];
        setup();
        break;
      case "message":
        state.messages.set(event.message.id, event.message);
        break;
      case "remove":
        state.messages.delete(event.id);
        break;
      case "view":
        state.views[event.user] = event.view;
        break;
      case "call":
        state.calls.push(event.call);
        if (state.calls.length > 200) state.calls.shift();
        break;
      case "problem":
        showProblem(event.text);
        break;
      default:
        break;
    }
    scheduleRender();
  }

  function setup() {
    const config = state.config;
    $("workspace-name").textContent = config.workspace;
    R.userNames = { [config.user.id]: config.user.name, [config.bot.id]: config.bot.name };
    R.channelNames = {};
    config.channels.forEach((c) => (R.channelNames[c.id] = c.name));
    if (!state.current) state.current = { kind: "channel", id: config.channels[0].id };
    if (!$("op-select").options.length) {
      config.operations.forEach((op) => {
        const option = el("option", null, op.replace("RUNNING_", "").toLowerCase());
        option.value = op;
        $("op-select").appendChild(option);
      });
    }
    $("age-task").textContent = `Age past ${config.stale_after_minutes} min`;
    renderTasks();
  }

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      render();
    });
  }

  // -- what is where ---------------------------------------------------------------------------

  function byTs(a, b) {
    return Number(a.ts) - Number(b.ts);
  }

  function currentChannel() {
    const current = state.current;
    if (!current) return null;
    return current.kind === "channel" ? current.id : state.config.dm;
  }

  function channelMessages(channel) {
    return [...state.messages.values()]
      .filter((m) => m.channel === channel && (!m.thread_ts || m.thread_ts === m.ts))
      .sort(byTs);
  }

  function replies(channel, ts) {
    return [...state.messages.values()]
      .filter((m) => m.channel === channel && m.thread_ts === ts && m.ts !== ts)
      .sort(byTs);
  }

  function unread(channel) {
    const seen = state.lastSeen[channel] || 0;
    return channelMessages(channel).filter((m) => !m.ephemeral && Number(m.ts) > seen).length;
  }

  function markSeen(channel) {
    const newest = channelMessages(channel).reduce((max, m) => Math.max(max, Number(m.ts)), 0);
    state.lastSeen[channel] = Math.max(state.lastSeen[channel] || 0, newest);
  }

  // -- drawing ---------------------------------------------------------------------------------

  function render() {
    if (!state.config) return;
    const channel = currentChannel();
    if (state.current.kind === "channel" || state.current.tab === "messages") markSeen(channel);
    renderNav();
    renderMain();
    renderThread();
    renderLog();
  }

  function renderNav() {
    const list = $("channel-list");
    list.replaceChildren();
    state.config.channels.forEach((c) => {
      const active = state.current.kind === "channel" && state.current.id === c.id;
      list.appendChild(navItem(`# ${c.name}`, active, unread(c.id), () => openChannel(c.id)));
    });
    const apps = $("app-list");
    apps.replaceChildren();
    const active = state.current.kind === "app";
    apps.appendChild(navItem(state.config.bot.name, active, unread(state.config.dm), () => openApp("home")));
  }

  function navItem(label, active, count, onClick) {
    const item = el("li");
    const button = el("button", "nav-item" + (active ? " active" : ""));
    button.type = "button";
    button.appendChild(el("span", "nav-label", label));
    if (count && !active) button.appendChild(el("span", "badge", String(count)));
    button.addEventListener("click", onClick);
    item.appendChild(button);
    return item;
  }

  function renderMain() {
    const config = state.config;
    const current = state.current;
    const tabs = $("view-tabs");
    tabs.replaceChildren();
    const list = $("messages");
    const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.replaceChildren();
    if (current.kind === "channel") {
      const name = R.channelNames[current.id];
      $("view-title").textContent = `# ${name}`;
      $("view-topic").textContent =
        current.id === config.stale_channel
          ? `Stale-task notices: tasks running ${config.stale_after_minutes} min or longer (checked every ${config.poll_interval_seconds} s)`
          : "Talk to the bot here: try the commands below.";
      $("composer").hidden = false;
      $("composer-input").placeholder = `Message #${name}`;
      fillMessages(list, channelMessages(current.id), false);
    } else {
      $("view-title").textContent = config.bot.name;
      $("view-topic").textContent = "The app's Home tab and its direct messages.";
      ["home", "messages"].forEach((tab) => {
        const button = el("button", "tab" + (current.tab === tab ? " active" : ""), tab === "home" ? "Home" : "Messages");
        button.type = "button";
        button.addEventListener("click", () => openApp(tab));
        tabs.appendChild(button);
      });
      if (current.tab === "home") {
        $("composer").hidden = true;
        list.appendChild(renderHome());
      } else {
        $("composer").hidden = false;
        $("composer-input").placeholder = `Message ${config.bot.name}`;
        fillMessages(list, channelMessages(config.dm), false);
      }
    }
    if (stick) list.scrollTop = list.scrollHeight;
  }

  function renderHome() {
    const view = state.views[state.config.user.id];
    if (!view) return el("p", "empty", "Opening the Home tab…");
    const home = el("div", "home");
    home.appendChild(
      R.renderBlocks(view.blocks, {
        onClick: (where, button) => click({ view_user: state.config.user.id, ...where }, button),
      })
    );
    return home;
  }

  function fillMessages(list, messages, inThread) {
    if (!messages.length) {
      list.appendChild(el("p", "empty", inThread ? "No replies yet." : "No messages yet. Type /kps below."));
      return;
    }
    messages.forEach((m) => list.appendChild(renderMessage(m, inThread)));
  }

  function timeOf(ts) {
    return new Date(Number(ts) * 1000).toLocaleTimeString(undefined, { hour: "numeric", minute: "2-digit" });
  }

  function renderMessage(m, inThread) {
    const config = state.config;
    const node = el("article", "msg" + (m.ephemeral ? " ephemeral" : ""));
    node.dataset.id = m.id;
    node.dataset.ts = m.ts;
    node.appendChild(el("div", "avatar" + (m.bot ? " bot" : ""), m.bot ? "K" : config.user.name[0].toUpperCase()));
    const body = el("div", "msg-body");
    const meta = el("div", "msg-meta");
    meta.appendChild(el("span", "author", m.bot ? config.bot.name : config.user.name));
    if (m.bot) meta.appendChild(el("span", "app-badge", "APP"));
    meta.appendChild(el("span", "time", timeOf(m.ts)));
    if (m.edited) meta.appendChild(el("span", "edited", "(edited)"));
    body.appendChild(meta);
    if (m.ephemeral) body.appendChild(el("div", "ephemeral-note", "Only visible to you"));
    if (m.command) body.appendChild(el("div", "invocation", `used ${m.command}`));
    body.appendChild(
      R.renderMessageBody(m, { onClick: (where, button) => click({ message_id: m.id, ...where }, button) })
    );
    if (!inThread) {
      const threadReplies = replies(m.channel, m.ts).filter((r) => !r.ephemeral);
      if (threadReplies.length) {
        const link = el("button", "reply-count", `${threadReplies.length} ${threadReplies.length === 1 ? "reply" : "replies"}`);
        link.type = "button";
        link.addEventListener("click", () => openThread(m.channel, m.ts));
        body.appendChild(link);
      } else if (!m.ephemeral && m.channel !== config.dm) {
        const start = el("button", "reply-start", "Reply in thread");
        start.type = "button";
        start.addEventListener("click", () => openThread(m.channel, m.ts));
        body.appendChild(start);
      }
    }
    node.appendChild(body);
    return node;
  }

  function renderThread() {
    const pane = $("thread");
    const thread = state.thread;
    pane.hidden = !thread;
    if (!thread) return;
    const list = $("thread-messages");
    const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.replaceChildren();
    const parent = [...state.messages.values()].find((m) => m.channel === thread.channel && m.ts === thread.ts);
    $("thread-channel").textContent = R.channelNames[thread.channel] ? `# ${R.channelNames[thread.channel]}` : "";
    if (parent) list.appendChild(renderMessage(parent, true));
    const rest = replies(thread.channel, thread.ts);
    const count = rest.filter((r) => !r.ephemeral).length;
    list.appendChild(el("div", "thread-divider", `${count} ${count === 1 ? "reply" : "replies"}`));
    rest.forEach((m) => list.appendChild(renderMessage(m, true)));
    if (stick) list.scrollTop = list.scrollHeight;
  }

  function renderLog() {
    const pane = $("log");
    pane.hidden = !state.logOpen;
    $("log-toggle").textContent = `API log (${state.calls.length})`;
    if (!state.logOpen) return;
    const list = $("log-list");
    list.replaceChildren();
    [...state.calls].reverse().forEach((call) => {
      const item = el("details", "call" + (call.error ? " failed" : ""));
      const summary = el("summary");
      summary.appendChild(el("span", "call-method", call.method));
      summary.appendChild(el("span", "call-status", call.error ? `${call.status} ${call.error}` : "ok"));
      summary.appendChild(el("span", "call-time", new Date(call.time * 1000).toLocaleTimeString()));
      item.appendChild(summary);
      item.appendChild(el("pre", "call-args", JSON.stringify(call.args, null, 2)));
      list.appendChild(item);
    });
  }

  // -- what the person does ----------------------------------------------------------------------

  function openChannel(id) {
    state.current = { kind: "channel", id };
    scheduleRender();
  }

  function openApp(tab) {
    state.current = { kind: "app", tab };
    if (tab === "home") request("POST", "/playground/home", {}).catch((e) => showProblem(e.message));
    scheduleRender();
  }

  function openThread(channel, ts) {
    state.thread = { channel, ts };
    scheduleRender();
    setTimeout(() => $("thread-input").focus(), 0);
  }

  function click(target, button) {
    button.disabled = true;
    request("POST", "/playground/click", target)
      .catch((e) => showProblem(e.message))
      .finally(() => {
        button.disabled = false;
      });
  }

  async function send(input, threadTs) {
    const text = input.value.trim();
    if (!text) return;
    const channel = threadTs ? state.thread.channel : currentChannel();
    hint("");
    try {
      await request("POST", "/playground/send", { channel, text, thread_ts: threadTs || null });
      input.value = "";
    } catch (error) {
      hint(error.message, true);
    }
  }

  function hint(text, isError) {
    const node = $("composer-error");
    node.textContent = text;
    node.hidden = !text;
    node.classList.toggle("error", !!isError);
  }

  function showProblem(text) {
    const box = $("problems");
    const item = el("div", "problem", text);
    box.appendChild(item);
    setTimeout(() => item.remove(), 10000);
  }

  // -- the simulator panel ---------------------------------------------------------------------

  async function refreshTasks() {
    try {
      const data = await request("GET", "/playground/sim/tasks");
      state.tasks = data.tasks;
      state.stats = data.stats;
    } catch (error) {
      $("sim-summary").textContent = error.message;
      return;
    }
    renderTasks();
  }

  function minutesOld(task) {
    return task.task_time_ms === null ? 0 : (Date.now() - task.task_time_ms) / 60000;
  }

  // Server names repeat (several tasks on one server, or the same name in two projects), so a
  // label names the operation and the age too, and the task id where even those match.
  function taskLabels(tasks, limit) {
    const labels = tasks.map((task) => {
      const age = Math.floor(minutesOld(task));
      const [state, op] = task.status.split("_");
      const doing = (op || task.status).toLowerCase() + (state === "READY" ? " (queued)" : "");
      return `${task.server_name} · ${doing} · ${age} min${age >= limit ? " (stale)" : ""}`;
    });
    const seen = new Map();
    labels.forEach((label) => seen.set(label, (seen.get(label) || 0) + 1));
    return labels.map((label, i) => (seen.get(label) > 1 ? `${label} · ${tasks[i].task_id}` : label));
  }

  function renderTasks() {
    if (!state.config) return;
    const limit = state.config.stale_after_minutes;
    const running = state.tasks
      .filter((t) => /^(RUNNING|READY)/.test(t.status))
      .sort((a, b) => (b.task_time_ms || 0) - (a.task_time_ms || 0));
    const stale = running.filter((t) => minutesOld(t) >= limit).length;
    const stats = state.stats || {};
    const mode = stats.faults_pending ? "failing" : stats.latency ? "slow" : "healthy";
    $("sim-summary").textContent = `${running.length} running · ${stale} stale · KPS ${mode}`;
    document.querySelectorAll("#kps-mode button").forEach((b) => b.classList.toggle("active", b.dataset.mode === mode));
    const select = $("task-select");
    const keep = state.selectedTask || select.value;
    select.replaceChildren();
    const labels = taskLabels(running, limit);
    running.forEach((task, index) => {
      const option = el("option", null, labels[index]);
      option.value = task.task_id;
      option.title = `${task.keypair_name} · ${task.operate_type} · ${task.task_id}`;
      select.appendChild(option);
    });
    if (running.some((t) => t.task_id === keep)) select.value = keep;
  }

  async function simulate(op, body, done) {
    $("sim-message").textContent = "…";
    try {
      const data = await request("POST", `/playground/sim/${op}`, body);
      $("sim-message").textContent = done(data.task || {});
    } catch (error) {
      $("sim-message").textContent = error.message;
    }
    refreshTasks();
  }

  function selectedTask() {
    const id = $("task-select").value;
    return state.tasks.find((t) => t.task_id === id);
  }

  function wirePanel() {
    $("task-select").addEventListener("change", () => (state.selectedTask = $("task-select").value));
    $("age-task").addEventListener("click", () => {
      const task = selectedTask();
      if (!task) return;
      simulate("age", { task_id: task.task_id }, () => `${task.server_name} is now stale; watch #kps-alerts.`);
    });
    [
      ["finish-ok", false, "succeeded"],
      ["finish-fail", true, "failed"],
    ].forEach(([id, failed, word]) => {
      $(id).addEventListener("click", () => {
        const task = selectedTask();
        if (!task) return;
        simulate("finish", { task_id: task.task_id, failed }, () => `${task.server_name} ${word}; if it was announced, see the notice's thread.`);
      });
    });
    $("add-task").addEventListener("click", () => {
      simulate("add", { operate_type: $("op-select").value }, (task) => {
        state.selectedTask = task.task_id;
        return `Added ${task.server_name}.`;
      });
    });
    document.querySelectorAll("#kps-mode button").forEach((button) => {
      button.addEventListener("click", () => simulate("kps", { mode: button.dataset.mode }, () => `KPS is ${button.dataset.mode} now.`));
    });
  }

  // -- start -------------------------------------------------------------------------------------

  function wire() {
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      send($("composer-input"), null);
    });
    $("thread-composer").addEventListener("submit", (event) => {
      event.preventDefault();
      send($("thread-input"), state.thread && state.thread.ts);
    });
    $("thread-close").addEventListener("click", () => {
      state.thread = null;
      scheduleRender();
    });
    $("log-toggle").addEventListener("click", () => {
      state.logOpen = !state.logOpen;
      scheduleRender();
    });
    document.querySelectorAll(".try").forEach((chip) => {
      chip.addEventListener("click", () => {
        $("composer-input").value = chip.dataset.text;
        $("composer-input").focus();
      });
    });
    wirePanel();
    connect();
    refreshTasks();
    setInterval(refreshTasks, 4000);
  }

  wire();
})();
