// memguard: the browser side of the Memorization tab and of the warning panel under a generation.
//
// The WebUI loads every javascript/*.js of every extension into every page, so everything lives under
// window.memguard, listeners are delegated from the document (the tab and the panel are rendered later, and again),
// and user text only ever goes into the page through textContent and form values, never through innerHTML.
//
// - memguard.readTxt2imgPrompt(current): the txt2img prompt (the "Paste from txt2img" button's _js).
// - memguard.sendToTxt2img(prompt): writes it into #txt2img_prompt and switches to the txt2img tab.
// - clicking a .memguard-word (or Enter/Space on it) offers "remove" and "de-emphasize" ([word], the WebUI's
//   attention syntax); the edit goes to the prompt box named by the enclosing .memguard-prompt's
//   data-memguard-target, and the box's "input" event tells gradio about it.
(function () {
    "use strict";

    if (window.memguard && window.memguard.loaded) {
        return;
    }
    var memguard = (window.memguard = window.memguard || {});
    memguard.loaded = true;

    var TXT2IMG = "txt2img_prompt";
    var menu = null;

    function root() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function byId(id) {
        var escaped = window.CSS && CSS.escape ? CSS.escape(id) : id.replace(/[^\w-]/g, "");
        return root().querySelector("#" + escaped) || document.querySelector("#" + escaped);
    }

    function promptBox(id) {
        var holder = byId(id);
        if (!holder) {
            return null;
        }
        return holder.tagName === "TEXTAREA" ? holder : holder.querySelector("textarea");
    }

    function setValue(box, value) {
        box.value = value;
        if (typeof updateInput === "function") {
            updateInput(box);
        } else {
            box.dispatchEvent(new Event("input", {bubbles: true}));
        }
    }

    function notify(text) {
        var toast = document.createElement("div");
        toast.className = "memguard-toast";
        toast.setAttribute("role", "status");
        toast.textContent = text;
        document.body.appendChild(toast);
        window.setTimeout(function () {
            toast.remove();
        }, 4000);
    }

    // --- txt2img ---------------------------------------------------------------------------------------------------
    memguard.readTxt2imgPrompt = function (current) {
        var box = promptBox(TXT2IMG);
        if (!box) {
            notify("memguard: there is no txt2img prompt box on this page.");
            return current;
        }
        return box.value;
    };

    memguard.switchToTxt2img = function () {
        if (typeof switch_to_txt2img === "function") {
            switch_to_txt2img();
            return;
        }
        var tabs = byId("tabs");
        var buttons = tabs ? tabs.querySelectorAll("button") : [];
        for (var i = 0; i < buttons.length; i++) {
            if (buttons[i].textContent.trim() === "txt2img") {
                buttons[i].click();
                return;
            }
        }
    };

    memguard.sendToTxt2img = function (prompt) {
        var box = promptBox(TXT2IMG);
        if (!box) {
            notify("memguard: there is no txt2img prompt box on this page.");
            return;
        }
        setValue(box, prompt == null ? "" : String(prompt));
        memguard.switchToTxt2img();
    };

    // --- prompt edits (pure string functions, exported for tests) --------------------------------------------------
    memguard.locateWord = function (value, word, start) {
        if (value.substr(start, word.length) === word) {
            return start;
        }
        var best = -1;
        for (var at = value.indexOf(word); at >= 0; at = value.indexOf(word, at + 1)) {
            if (best < 0 || Math.abs(at - start) < Math.abs(best - start)) {
                best = at;
            }
        }
        return best;
    };

    memguard.removeWord = function (value, start, end) {
        var before = value.slice(0, start);
        var after = value.slice(end);
        if (/,\s*$/.test(before) && /^\s*,/.test(after)) {
            after = after.replace(/^\s*,/, "");
        } else if (/^[,.;:]/.test(after)) {
            before = before.replace(/\s+$/, "");
        }
        if (/\s$/.test(before) && /^\s/.test(after)) {
            after = after.replace(/^\s+/, "");
        }
        if (before.trim() === "") {
            before = "";
            after = after.replace(/^[\s,]+/, "");
        }
        if (after.trim() === "") {
            after = "";
            before = before.replace(/[\s,]+$/, "");
        }
        return before + after;
    };

    memguard.deemphasizeWord = function (value, start, end) {
        return value.slice(0, start) + "[" + value.slice(start, end) + "]" + value.slice(end);
    };

    function shiftLater(span, from, delta) {
        var container = span.closest(".memguard-prompt");
        var words = container ? container.querySelectorAll(".memguard-word") : [];
        for (var i = 0; i < words.length; i++) {
            var start = parseInt(words[i].dataset.start, 10);
            if (words[i] !== span && start >= from) {
                words[i].dataset.start = String(start + delta);
                words[i].dataset.end = String(parseInt(words[i].dataset.end, 10) + delta);
            }
        }
    }

    memguard.editWord = function (span, action) {
        var container = span.closest(".memguard-prompt");
        var target = container && container.dataset.memguardTarget;
        var box = target ? promptBox(target) : null;
        if (!box) {
            notify("memguard: the prompt box for this word is not on this page.");
            return false;
        }
        var word = span.dataset.word || "";
        var start = memguard.locateWord(box.value, word, parseInt(span.dataset.start, 10) || 0);
        if (!word || start < 0) {
            notify("memguard: \u201c" + word + "\u201d is no longer in the prompt.");
            return false;
        }
        var end = start + word.length;
        var before = box.value;
        var next = action === "remove" ? memguard.removeWord(before, start, end)
            : memguard.deemphasizeWord(before, start, end);
        setValue(box, next);
        shiftLater(span, end, next.length - before.length);
        if (action !== "remove") {
            span.dataset.start = String(start + 1);
            span.dataset.end = String(end + 1);
        }
        return true;
    };

    // --- the word menu ---------------------------------------------------------------------------------------------
    function closeMenu() {
        if (menu) {
            menu.remove();
            menu = null;
        }
    }

    function menuButton(label, onPick) {
        var button = document.createElement("button");
        button.type = "button";
        button.className = "memguard-menu-item";
        button.setAttribute("role", "menuitem");
        button.textContent = label;
        button.addEventListener("click", function (event) {
            event.stopPropagation();
            closeMenu();
            onPick();
        });
        return button;
    }

    memguard.openMenu = function (span) {
        closeMenu();
        var word = span.dataset.word || span.textContent;
        menu = document.createElement("div");
        menu.className = "memguard-menu";
        menu.setAttribute("role", "menu");
        var title = document.createElement("div");
        title.className = "memguard-menu-title";
        title.textContent = "\u201c" + word + "\u201d " + (span.getAttribute("title") || "");
        menu.appendChild(title);
        menu.appendChild(menuButton("Remove \u201c" + word + "\u201d", function () {
            if (memguard.editWord(span, "remove")) {
                span.classList.add("memguard-removed");
            }
        }));
        menu.appendChild(menuButton("De-emphasize as [" + word + "]", function () {
            if (memguard.editWord(span, "deemphasize")) {
                span.classList.add("memguard-deemphasized");
            }
        }));
        var rect = span.getBoundingClientRect();
        menu.style.left = Math.round(rect.left + window.scrollX) + "px";
        menu.style.top = Math.round(rect.bottom + window.scrollY + 4) + "px";
        document.body.appendChild(menu);
        menu.querySelector("button").focus();
    };

    function wordFrom(event) {
        var path = event.composedPath ? event.composedPath() : [];
        for (var i = 0; i < path.length; i++) {
            if (path[i].classList && path[i].classList.contains("memguard-word")) {
                return path[i];
            }
        }
        return event.target && event.target.closest ? event.target.closest(".memguard-word") : null;
    }

    function inMenu(event) {
        var path = event.composedPath ? event.composedPath() : [];
        return menu !== null && path.indexOf(menu) >= 0;
    }

    function editable(span) {
        var container = span.closest(".memguard-prompt");
        return container && container.dataset.memguardTarget && !span.classList.contains("memguard-removed");
    }

    document.addEventListener("click", function (event) {
        if (inMenu(event)) {
            return;
        }
        var span = wordFrom(event);
        if (span && editable(span)) {
            event.preventDefault();
            memguard.openMenu(span);
        } else {
            closeMenu();
        }
    });


    // The warning panel under a generation: the WebUI shows the generation's log (#html_log_txt2img) as escaped
    // text, one line per <br>; memguard's log ends with one "memguard-data:{json}" line, which is taken out here
    // (the other lines stay as they are) and rendered into a panel by the server (POST /memguard/v1/panel escapes
    // every string; see memguard/ui/panel.py). A new log without that line removes the previous panel.
    var PREFIX = "memguard-data:";

    function takeDataLine(node) {
        var walker = document.createTreeWalker(node, NodeFilter.SHOW_TEXT);
        while (walker.nextNode()) {
            var text = walker.currentNode;
            var at = text.nodeValue.indexOf(PREFIX);
            if (at < 0) {
                continue;
            }
            var payload = text.nodeValue.slice(at + PREFIX.length).split("\n")[0];
            text.nodeValue = text.nodeValue.slice(0, at).replace(/\s+$/, "");
            if (!text.nodeValue) {
                var previous = text.previousSibling;
                if (previous && previous.nodeName === "BR") {
                    previous.remove();
                }
                text.remove();
            }
            return payload;
        }
        return null;
    }

    function showPanel(log, tab, payload) {
        fetch("memguard/v1/panel", {
            method: "POST",
            headers: {"Content-Type": "application/json"},
            body: JSON.stringify({payload: payload, target: tab + "_prompt"}),
        })
            .then(function (response) {
                return response.ok ? response.json() : null;
            })
            .then(function (data) {
                if (!data || typeof data.html !== "string") {
                    return;
                }
                var host = log.querySelector(".memguard-panel-host") || document.createElement("div");
                host.className = "memguard-panel-host";
                host.innerHTML = data.html; // server-rendered, every user string escaped there
                log.appendChild(host);
            })
            .catch(function () {});
    }

    memguard.renderLogs = function () {
        ["txt2img", "img2img"].forEach(function (tab) {
            var log = byId("html_log_" + tab);
            if (!log) {
                return;
            }
            var ours = false;
            Array.prototype.forEach.call(log.querySelectorAll("p, div.comments, pre"), function (node) {
                if (node.closest(".memguard-panel-host")) {
                    return;
                }
                if (node.dataset.memguardDone) {
                    ours = true;
                    return;
                }
                var payload = takeDataLine(node);
                if (payload !== null) {
                    ours = true;
                    node.dataset.memguardDone = "1";
                    showPanel(log, tab, payload);
                }
            });
            var stale = log.querySelector(".memguard-panel-host");
            if (!ours && stale) {
                stale.remove();
            }
        });
    };

    if (typeof onUiUpdate === "function") {
        onUiUpdate(memguard.renderLogs);
    }

    document.addEventListener("keydown", function (event) {
        if (event.key === "Escape") {
            closeMenu();
            return;
        }
        var span = wordFrom(event);
        if (span && editable(span) && (event.key === "Enter" || event.key === " ")) {
            event.preventDefault();
            memguard.openMenu(span);
        }
    });
})();
