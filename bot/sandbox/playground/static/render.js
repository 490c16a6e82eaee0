// Block Kit and mrkdwn to DOM nodes, for the blocks kps-bot sends and nothing more.
// Every piece of text becomes a text node (textContent); nothing the bot sends is parsed as HTML.
(function (global) {
  "use strict";

  // The shortcodes the bot's messages use, plus a few common ones; others stay as typed.
  const EMOJI = {
    warning: "\u26a0\ufe0f",
    white_check_mark: "\u2705",
    heavy_check_mark: "\u2714\ufe0f",
    x: "\u274c",
    hourglass: "\u231b",
    hourglass_flowing_sand: "\u23f3",
    zzz: "\ud83d\udca4",
    bell: "\ud83d\udd14",
    no_bell: "\ud83d\udd15",
    eyes: "\ud83d\udc40",
    rotating_light: "\ud83d\udea8",
    large_green_circle: "\ud83d\udfe2",
    red_circle: "\ud83d\udd34",
    information_source: "\u2139\ufe0f",
    key: "\ud83d\udd11",
    mag: "\ud83d\udd0d",
    repeat: "\ud83d\udd01",
    stopwatch: "\u23f1\ufe0f",
    question: "\u2753",
    grey_question: "\u2754",
    black_square_for_stop: "\u23f9\ufe0f",
    no_entry: "\u26d4",
    tada: "\ud83c\udf89",
    "+1": "\ud83d\udc4d",
    thumbsup: "\ud83d\udc4d",
  };
  const ENTITIES = { amp: "&", lt: "<", gt: ">" };
  const SAFE_SCHEMES = /^(https?:|mailto:)/i;
  // Slack's formatting markers count only at word edges ("*bold*", not "2*3*4").
  const OPEN_BEFORE = /[\s([{"'\u2018\u201c.,;:!?\u2013\u2014-]/;
  const CLOSE_AFTER = /[\s)\]}"'\u2019\u201d.,;:!?\u2013\u2014-]/;
  const MARKERS = { "*": "b", _: "i", "~": "s" };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function decode(text) {
    return text.replace(/&(amp|lt|gt);/g, (_, name) => ENTITIES[name]);
  }

  function emojify(text) {
    return text.replace(/:([a-z0-9_+-]+):/g, (all, name) => EMOJI[name] || all);
  }

  // Text as the reader sees it: entities decoded once (so "&amp;lt;" shows "&lt;"), emoji shown.
  function appendText(parent, raw) {
    if (raw) parent.appendChild(document.createTextNode(emojify(decode(raw))));
  }

  // The end of a `...` span or a <...> token starting at i, or -1.
  function spanEnd(text, i) {
    if (text[i] === "`") {
      const end = text.indexOf("`", i + 1);
      return end > i + 1 && text.slice(i + 1, end).indexOf("\n") === -1 ? end : -1;
    }
    if (text[i] === "<") {
      const end = text.indexOf(">", i + 1);
      return end > i ? end : -1;
    }
    return -1;
  }

  function closingMarker(text, start, marker) {
    for (let j = start + 1; j < text.length; j++) {
      const c = text[j];
      if (c === "\n") return -1;
      if (c === "`" || c === "<") {
        const end = spanEnd(text, j);
        if (end !== -1) {
          j = end;
          continue;
        }
      }
      if (
        c === marker &&
        j > start + 1 &&
        !/\s/.test(text[j - 1]) &&
        (j + 1 === text.length || CLOSE_AFTER.test(text[j + 1]))
      ) {
        return j;
      }
    }
    return -1;
  }

  // mrkdwn into `parent`: *bold*, _italic_, ~strike~, `code`, ```pre```, <links>, <!date^…>.
  function appendMrkdwn(parent, text) {
    let buffer = "";
    const flush = () => {
      appendText(parent, buffer);
      buffer = "";
    };
    let i = 0;
    while (i < text.length) {
      const c = text[i];
      if (text.startsWith("```", i)) {
        const end = text.indexOf("```", i + 3);
        if (end !== -1) {
          flush();
          parent.appendChild(el("pre", "mk-pre", decode(text.slice(i + 3, end))));
          i = end + 3;
          continue;
        }
      }
      if (c === "`" || c === "<") {
        const end = spanEnd(text, i);
        if (end !== -1) {
          flush();
          if (c === "`") parent.appendChild(el("code", "mk-code", decode(text.slice(i + 1, end))));
          else parent.appendChild(renderToken(text.slice(i + 1, end)));
          i = end + 1;
          continue;
        }
      }
      if (MARKERS[c] && (i === 0 || OPEN_BEFORE.test(text[i - 1])) && /\S/.test(text[i + 1] || "")) {
        const end = closingMarker(text, i, c);
        if (end !== -1) {
          flush();
          const styled = el(MARKERS[c], "mk-" + MARKERS[c]);
          appendMrkdwn(styled, text.slice(i + 1, end));
          parent.appendChild(styled);
          i = end + 1;
          continue;
        }
      }
      buffer += c;
      i++;
    }
    flush();
    return parent;
  }

  // The inside of <...>: a date, a mention, a special mention, or a link.
  function renderToken(token) {
    const bar = token.indexOf("|");
    const target = bar === -1 ? token : token.slice(0, bar);
    const label = bar === -1 ? null : token.slice(bar + 1);
    if (target.startsWith("!date^")) return renderDate(target, label);
    if (target.startsWith("!")) {
      const name = target.slice(1).split("^")[0];
      return el("span", "mk-mention", "@" + (label ? decode(label) : name));
    }
    if (target.startsWith("@")) {
      const names = global.KpsRender.userNames || {};
      const id = target.slice(1);
      return el("span", "mk-mention", "@" + (label ? decode(label) : names[id] || id));
    }
    if (target.startsWith("#")) {
      const names = global.KpsRender.channelNames || {};
      const id = target.slice(1);
      return el("span", "mk-mention", "#" + (label ? decode(label) : names[id] || id));
    }
    const url = decode(target);
    if (!SAFE_SCHEMES.test(url)) return el("span", null, decode(label || target));
    const link = el("a", "mk-link", label ? decode(label) : url);
    link.href = url;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    return link;
  }

  function sameDay(a, b) {
    return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
  }

  function pretty(date, plain) {
    const today = new Date();
    const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
    const tomorrow = new Date(today.getFullYear(), today.getMonth(), today.getDate() + 1);
    if (sameDay(date, today)) return "Today";
    if (sameDay(date, yesterday)) return "Yesterday";
    if (sameDay(date, tomorrow)) return "Tomorrow";
    return plain;
  }

  function ago(date) {
    const seconds = Math.round((Date.now() - date.getTime()) / 1000);
    const size = Math.abs(seconds);
    const [n, unit] =
      size < 60 ? [0, ""] : size < 3600 ? [Math.floor(size / 60), "minute"] : size < 86400 ? [Math.floor(size / 3600), "hour"] : [Math.floor(size / 86400), "day"];
    if (!unit) return "just now";
    const words = `${n} ${unit}${n === 1 ? "" : "s"}`;
    return seconds >= 0 ? `${words} ago` : `in ${words}`;
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  // Slack's date tokens, in the reader's own time zone and locale.
  function formatDate(date, format) {
    const long = { year: "numeric", month: "long", day: "numeric" };
    const short = { year: "numeric", month: "short", day: "numeric" };
    const full = { weekday: "long", year: "numeric", month: "long", day: "numeric" };
    const words = {
      date_num: () => `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`,
      date: () => date.toLocaleDateString(undefined, long),
      date_short: () => date.toLocaleDateString(undefined, short),
      date_long: () => date.toLocaleDateString(undefined, full),
      date_pretty: () => pretty(date, date.toLocaleDateString(undefined, long)),
      date_short_pretty: () => pretty(date, date.toLocaleDateString(undefined, short)),
      date_long_pretty: () => pretty(date, date.toLocaleDateString(undefined, full)),
      time: () => date.toLocaleTimeString(undefined, { hour: "numeric", minute: "2-digit" }),
      time_secs: () => date.toLocaleTimeString(undefined, { hour: "numeric", minute: "2-digit", second: "2-digit" }),
      ago: () => ago(date),
    };
    let unknown = false;
    const text = format.replace(/\{(\w+)\}/g, (all, name) => {
      if (!words[name]) {
        unknown = true;
        return all;
      }
      return words[name]();
    });
    return unknown ? null : text;
  }

  // <!date^1714556760^{date_short_pretty} {time}|2024-05-01 09:46 UTC>, optionally ^link.
  function renderDate(target, fallback) {
    const parts = target.split("^");
    const seconds = Number(parts[1]);
    const date = new Date(seconds * 1000);
    const fallbackText = fallback === null ? target : decode(fallback);
    const text = Number.isFinite(seconds) && parts.length >= 3 ? formatDate(date, decode(parts[2])) : null;
    const node = el("time", "mk-date", text === null ? fallbackText : text);
    if (text !== null) {
      node.dateTime = date.toISOString();
      node.title = fallbackText;
    }
    const link = parts[3] ? decode(parts[3]) : "";
    if (link && SAFE_SCHEMES.test(link)) {
      const a = el("a", "mk-link");
      a.href = link;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      a.appendChild(node);
      return a;
    }
    return node;
  }

  // A text object: mrkdwn is formatted; plain_text is shown as it is (emoji aside).
  function renderText(object, className) {
    const node = el("div", className);
    if (!object || typeof object.text !== "string") return node;
    if (object.type === "mrkdwn") appendMrkdwn(node, object.text);
    else node.textContent = object.emoji === false ? object.text : emojify(object.text);
    return node;
  }

  function unknown(kind, value) {
    const box = el("div", "blk-unknown");
    box.appendChild(el("div", "blk-unknown-label", `Not shown by the playground: ${kind}`));
    box.appendChild(el("pre", "blk-unknown-json", JSON.stringify(value, null, 2)));
    return box;
  }

  function renderButton(element, where, options) {
    const button = el("button", "blk-button");
    button.type = "button";
    button.textContent = emojify((element.text && element.text.text) || "");
    if (element.style === "primary" || element.style === "danger") button.classList.add(element.style);
    if (element.action_id) button.dataset.actionId = element.action_id;
    button.addEventListener("click", () => {
      if (element.url && SAFE_SCHEMES.test(element.url)) global.open(element.url, "_blank", "noopener");
      if (options.onClick) options.onClick(where, button);
    });
    return button;
  }

  function renderElement(element, where, options) {
    if (element && element.type === "button") return renderButton(element, where, options);
    return unknown(`element ${element && element.type}`, element);
  }

  const BLOCKS = {
    header(block) {
      return renderText(block.text, "blk-header");
    },
    divider() {
      return el("hr", "blk-divider");
    },
    section(block, index, options) {
      const node = el("div", "blk-section");
      const main = el("div", "blk-section-main");
      if (block.text) main.appendChild(renderText(block.text, "blk-text"));
      if (Array.isArray(block.fields)) {
        const fields = el("div", "blk-fields");
        block.fields.forEach((field) => fields.appendChild(renderText(field, "blk-field")));
        main.appendChild(fields);
      }
      node.appendChild(main);
      if (block.accessory) {
        const accessory = el("div", "blk-accessory");
        accessory.appendChild(renderElement(block.accessory, { block: index, element: null }, options));
        node.appendChild(accessory);
      }
      return node;
    },
    context(block) {
      const node = el("div", "blk-context");
      (block.elements || []).forEach((element) => {
        if (element.type === "mrkdwn" || element.type === "plain_text") node.appendChild(renderText(element, "blk-context-item"));
        else node.appendChild(unknown(`context element ${element.type}`, element));
      });
      return node;
    },
    actions(block, index, options) {
      const node = el("div", "blk-actions");
      (block.elements || []).forEach((element, j) => node.appendChild(renderElement(element, { block: index, element: j }, options)));
      return node;
    },
  };

  // A list of blocks; options.onClick(where, button) gets {block, element} for each click.
  function renderBlocks(blocks, options) {
    const node = el("div", "blocks");
    (blocks || []).forEach((block, index) => {
      const render = block && Object.prototype.hasOwnProperty.call(BLOCKS, block.type) ? BLOCKS[block.type] : null;
      node.appendChild(render ? render(block, index, options || {}) : unknown(`block ${block && block.type}`, block));
    });
    return node;
  }

  // A message's visible body: its blocks, or its fallback text when it has none.
  function renderMessageBody(message, options) {
    if (message.blocks && message.blocks.length) return renderBlocks(message.blocks, options);
    return appendMrkdwn(el("div", "blk-text"), message.text || "");
  }

  global.KpsRender = {
    appendMrkdwn,
    renderBlocks,
    renderMessageBody,
    formatDate,
    userNames: {},
    channelNames: {},
  };
})(window);
