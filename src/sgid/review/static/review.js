// sgid review: saves clicks as they happen (JSON POSTs carrying the page's CSRF token) and keyboard shortcuts.
// Plain JavaScript, no build step. Text from the server is only ever set with textContent (never innerHTML).
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  function toast(text, isError) {
    const box = document.getElementById("toast");
    box.textContent = text;
    box.className = isError ? "toast error" : "toast";
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { box.hidden = true; }, isError ? 6000 : 1500);
  }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { data = { error: response.statusText }; }
    if (!response.ok) { throw new Error(data.error || ("HTTP " + response.status)); }
    return data;
  }

  // -- the name (gallery reviewer / study annotator) ------------------------------------------------------
  function nameForm(formId, inputId, after) {
    const form = document.getElementById(formId);
    if (!form) { return; }
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      try {
        const data = await post("/api/name", { name: document.getElementById(inputId).value });
        after(data.name);
      } catch (e) { toast(e.message, true); }
    });
  }
  nameForm("name-form", "name-input", function (name) {
    document.getElementById("name-status").textContent = "reviewing as " + name;
    toast("saved");
  });
  nameForm("annotator-form", "annotator-input", function () { window.location.href = "/study"; });

  // -- gallery: accept / reject / best / clear ----------------------------------------------------------------
  const cards = Array.from(document.querySelectorAll(".card"));
  const STATES = ["state-accepted", "state-rejected", "state-unreviewed"];
  const MINE = ["mine-accept", "mine-reject", "mine-best", "mine-passed"];

  function show(items) {
    Object.keys(items).forEach(function (id) {
      const card = document.querySelector('.card[data-item="' + id + '"]');
      if (!card) { return; }
      const st = items[id];
      card.classList.remove.apply(card.classList, STATES.concat(MINE));
      card.classList.add("state-" + st.state);
      if (st.mine) { card.classList.add("mine-" + st.mine); }
      card.querySelector('[data-role="status"]').textContent = st.text;
    });
  }

  async function act(card, action) {
    const item = Number(card.dataset.item);
    try {
      let data;
      if (action === "best") {
        data = await post("/api/best", { item: item, clear: card.classList.contains("mine-best") });
      } else {
        data = await post("/api/decision", { item: item, decision: action === "clear" ? null : action });
      }
      show(data.items);
    } catch (e) { toast(e.message, true); }
  }

  cards.forEach(function (card) {
    card.querySelectorAll("button[data-action]").forEach(function (button) {
      button.addEventListener("click", function () { card.focus(); act(card, button.dataset.action); });
    });
  });

  function focused() { return cards.indexOf(document.activeElement); }
  function move(step) {
    if (!cards.length) { return; }
    const at = focused();
    const next = at < 0 ? 0 : Math.min(cards.length - 1, Math.max(0, at + step));
    cards[next].focus();
  }

  const help = document.getElementById("help");
  const helpButton = document.getElementById("help-button");
  if (helpButton) { helpButton.addEventListener("click", function () { help.hidden = !help.hidden; }); }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    const tag = (event.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea") { return; }
    const card = cards[focused()];
    const actions = { a: "accept", r: "reject", b: "best", u: "clear" };
    if (event.key === "j" || event.key === "ArrowRight") { move(1); }
    else if (event.key === "k" || event.key === "ArrowLeft") { move(-1); }
    else if (actions[event.key] && card) { act(card, actions[event.key]); }
    else if (event.key === "o" && card) { window.open(card.querySelector("a.full").href, "_blank", "noopener"); }
    else if (event.key === "n") {
      const next = document.getElementById("next-page") || document.getElementById("next-item");
      if (next) { window.location.href = next.href; }
    } else if (event.key === "p") {
      const prev = document.getElementById("prev-page") || document.getElementById("prev-item");
      if (prev) { window.location.href = prev.href; }
    } else if (event.key === "?" && help) { help.hidden = !help.hidden; }
    else { return; }
    event.preventDefault();
  });

  // -- study: ratings saved as clicked --------------------------------------------------------------------
  const study = document.querySelector(".study");
  if (study) {
    const item = Number(study.dataset.item);
    const radios = Array.from(study.querySelectorAll('input[type="radio"]'));
    const count = document.getElementById("rated-count");
    const scales = Array.from(study.querySelectorAll(".scale"));
    function progress() {
      const given = scales.filter(function (s) { return s.querySelector("input:checked"); }).length;
      count.textContent = given + " of " + scales.length + " ratings given";
      scales.forEach(function (s) { s.classList.toggle("saved", !!s.querySelector("input:checked")); });
    }
    radios.forEach(function (radio) {
      radio.addEventListener("change", async function () {
        try {
          await post("/api/rating", {
            item: item, position: Number(radio.dataset.position), scale: radio.dataset.scale, value: Number(radio.value),
          });
          progress();
        } catch (e) { radio.checked = false; progress(); toast(e.message, true); }
      });
    });
    progress();
  }
})();
