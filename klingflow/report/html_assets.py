"""The review page's style and script, inlined into every page (it loads nothing else)."""

from __future__ import annotations

STYLE = """
:root { --ok: #1f7a3d; --cached: #2d6cdf; --fail: #c62828; --skip: #8a6d00; --idle: #777;
        --bg: #f6f7f9; --card: #fff; --line: #d9dce1; --ink: #1b1e23; --muted: #5c6370;
        --wait: #f0a500; --queue: #c9ced6; --submit: #8fb3f0; --run: #2d6cdf;
        --collect: #5aa7a7; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--ink); background: var(--bg); }
main { max-width: 1400px; margin: 0 auto; padding: 0 20px 40px; }
h1 { font-size: 22px; margin: 0; }
h2 { font-size: 17px; margin: 28px 0 10px; border-bottom: 1px solid var(--line);
     padding-bottom: 4px; }
a { color: var(--cached); }
.top { background: var(--card); border-bottom: 1px solid var(--line); padding: 16px 20px; }
.top .title { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
.facts { display: flex; flex-wrap: wrap; gap: 6px 22px; margin: 10px 0 0; }
.facts div { display: flex; gap: 6px; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; font-weight: 600; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         font-weight: 700; color: #fff; background: var(--idle); text-transform: uppercase; }
.badge.succeeded, .badge.ready { background: var(--ok); }
.badge.cached { background: var(--cached); }
.badge.failed, .badge.aborted, .badge.incomplete { background: var(--fail); }
.badge.skipped, .badge.not_run, .badge.interrupted { background: var(--skip); }
.alert { margin: 10px 0 0; padding: 8px 12px; border-radius: 6px; background: #fdecea;
         border: 1px solid #f5c2c0; color: #7a1c1c; overflow-wrap: anywhere; }
.alert a { color: #7a1c1c; font-weight: 600; }
.films { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 16px; }
.film { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px;
        padding: 10px; }
.film video { width: 100%; background: #000; border-radius: 4px; }
.film.incomplete { border: 2px solid var(--fail); background: #fff6f5; }
.film figcaption { margin-top: 6px; color: var(--muted); }
.film figcaption strong { color: var(--ink); }
.parts { margin: 4px 0 0; padding: 0; list-style: none; display: flex; flex-wrap: wrap; gap: 4px; }
.parts li { padding: 0 6px; border-radius: 4px; background: #eef1f5; font-size: 12px; }
.parts li.missing { background: var(--fail); }
.parts li.missing a { color: #fff; }
.parts li.seam::before { content: "\\2194 "; }
.thumb { display: block; width: 100%; aspect-ratio: 16 / 9; object-fit: contain;
         background: #111; border-radius: 4px; }
.nofile { display: flex; align-items: center; justify-content: center; width: 100%;
          aspect-ratio: 16 / 9; background: repeating-linear-gradient(45deg, #eee, #eee 8px,
          #f8f8f8 8px, #f8f8f8 16px); color: var(--muted); border-radius: 4px; font-size: 12px;
          text-align: center; padding: 4px; }
.seams { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 12px; }
.seam { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
.seam .pair { display: grid; grid-template-columns: 1fr 1fr; gap: 6px; }
.seam figure { margin: 0; }
.seam figcaption { font-size: 12px; color: var(--muted); }
.seam .diff { margin-top: 6px; font-weight: 600; }
.seam.warn { border: 2px solid var(--wait); background: #fff8e6; }
.seam.warn .diff { color: #8a5a00; }
.toolbar { display: flex; gap: 8px; margin: 0 0 10px; flex-wrap: wrap; }
.toolbar button { border: 1px solid var(--line); background: var(--card); padding: 3px 10px;
                  border-radius: 14px; cursor: pointer; font: inherit; }
.toolbar button[aria-pressed="true"] { background: var(--ink); color: #fff; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 14px; }
.cards.problems-only .card:not(.problem) { display: none; }
.card { background: var(--card); border: 1px solid var(--line); border-left: 6px solid var(--ok);
        border-radius: 8px; padding: 10px; }
.card.cached { border-left-color: var(--cached); }
.card.failed { border: 2px solid var(--fail); border-left-width: 6px; background: #fff6f5; }
.card.skipped, .card.not_run, .card.interrupted { border-left-color: var(--skip);
        background: #fffbea; }
.card header { display: flex; justify-content: space-between; align-items: center; gap: 8px; }
.card h3 { margin: 0; font-size: 15px; word-break: break-all; }
.card .frames { display: grid; grid-template-columns: 1fr 1fr; gap: 6px; margin: 8px 0; }
.card .frames figure { margin: 0; }
.card .frames figcaption { font-size: 11px; color: var(--muted); }
.card video { width: 100%; background: #000; border-radius: 4px; aspect-ratio: 16 / 9; }
.card .prompt { font-style: italic; margin: 6px 0; }
.card dl { display: grid; grid-template-columns: auto 1fr; gap: 1px 10px; margin: 6px 0 0;
           font-size: 13px; }
.card dt { color: var(--muted); }
.card dd { margin: 0; word-break: break-word; }
.card .error { margin: 8px 0 0; padding: 6px 8px; border-radius: 4px; background: #fdecea;
               color: #7a1c1c; font-weight: 600; overflow-wrap: anywhere; }
.card.skipped .error, .card.not_run .error, .card.interrupted .error { background: #fff1c2;
               color: #5c4600; }
.gantt { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px; }
.legend { display: flex; gap: 14px; flex-wrap: wrap; font-size: 12px; margin-bottom: 8px; }
.legend span::before { content: ""; display: inline-block; width: 12px; height: 10px;
                       margin-right: 4px; vertical-align: -1px; background: var(--c); }
.lane { margin-top: 10px; }
.lane h3 { font-size: 14px; margin: 0 0 4px; }
.lane h3 small { color: var(--muted); font-weight: 400; }
.row { display: grid; grid-template-columns: 160px 1fr; align-items: center; height: 16px; }
.row a { font-size: 12px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap;
         color: var(--ink); text-decoration: none; }
.track { position: relative; height: 12px; background: #f1f3f6; }
.track i { position: absolute; top: 0; bottom: 0; min-width: 1px; }
.track .queued { background: var(--queue); }
.track .waiting { background: repeating-linear-gradient(45deg, var(--wait), var(--wait) 4px,
                  #ffd36b 4px, #ffd36b 8px); }
.track .submitting { background: var(--submit); }
.track .running { background: var(--run); }
.track .collecting { background: var(--collect); }
.track .failed { background: var(--fail); }
.track .cached { background: var(--ok); }
.axis { display: grid; grid-template-columns: 160px 1fr; font-size: 11px; color: var(--muted); }
.axis .ticks { position: relative; height: 14px; }
.axis .ticks span { position: absolute; transform: translateX(-50%); }
.axis .ticks span:first-child { transform: none; }
footer { margin-top: 30px; color: var(--muted); font-size: 12px; }
"""

SCRIPT = """
(function () {
  "use strict";
  var cards = document.getElementById("cards");
  var buttons = document.querySelectorAll("[data-filter]");
  buttons.forEach(function (button) {
    button.addEventListener("click", function () {
      var problems = button.getAttribute("data-filter") === "problems";
      if (cards) { cards.classList.toggle("problems-only", problems); }
      buttons.forEach(function (b) { b.setAttribute("aria-pressed", String(b === button)); });
    });
  });
  // Posters are set when a clip comes near the screen: a page of thousands of
  // clips loads only what is looked at.
  var videos = document.querySelectorAll("video[data-poster]");
  function showPoster(video) {
    video.setAttribute("poster", video.getAttribute("data-poster"));
    video.removeAttribute("data-poster");
  }
  if (!("IntersectionObserver" in window)) { videos.forEach(showPoster); return; }
  var observer = new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      if (entry.isIntersecting) { showPoster(entry.target); observer.unobserve(entry.target); }
    });
  }, {rootMargin: "600px"});
  videos.forEach(function (video) { observer.observe(video); });
})();
"""
