// The search page: one query at a time, results appended on scroll, the query kept in the URL.
// Metadata only ever reaches the page through textContent and attribute setters: never as HTML.
"use strict";

const PAGE = 24;
const $ = (id) => document.getElementById(id);
const form = $("search"), box = $("q"), upload = $("upload"), results = $("results"), status = $("status");
const dedup = $("dedup"), minScore = $("minscore"), minScoreValue = $("minscore-value");

// The current query: {kind: "text" | "id" | "upload", value}, and how far its results are loaded.
let query = null, offset = 0, more = false, loading = false, generation = 0, uploaded = null;

function indexName() { return document.querySelector("input[name=index]:checked").value; }
function minScoreSetting() { const v = parseFloat(minScore.value); return v <= -1 ? null : v; }

function say(text, isError = false) {
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function params(extra = {}) {
  const p = new URLSearchParams();
  if (query.kind === "text") p.set("text", query.value);
  if (query.kind === "id") p.set("id", String(query.value));
  p.set("index", indexName());
  if (dedup.checked) p.set("hide_duplicates", "true");
  const m = minScoreSetting();
  if (m !== null) p.set("min_score", m.toFixed(2));
  for (const [k, v] of Object.entries(extra)) p.set(k, String(v));
  return p;
}

function keepInUrl() {
  const p = new URLSearchParams();
  if (query.kind === "text") p.set("q", query.value);
  if (query.kind === "id") p.set("like", String(query.value));
  if (indexName() !== "image") p.set("index", indexName());
  if (dedup.checked) p.set("dedup", "1");
  const m = minScoreSetting();
  if (m !== null) p.set("min", m.toFixed(2));
  const url = query.kind === "upload" ? location.pathname : location.pathname + "?" + p.toString();
  history.replaceState(null, "", url);
}

async function ask(extra) {
  const url = "/knn?" + params(extra).toString();
  const init = query.kind === "upload" ? {method: "POST", body: uploaded} : {};
  const response = await fetch(url, init);
  return response;
}

function text(tag, className, content) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  el.textContent = content;
  return el;
}

function showHit(hit) {
  const li = document.createElement("li");
  li.className = "hit";
  li.dataset.id = String(hit.id);
  li.dataset.group = String(hit.dup_group);
  const img = document.createElement("img");
  img.src = hit.image;
  img.alt = hit.caption || "picture " + hit.id;
  img.loading = "lazy";
  li.append(img);
  li.append(text("div", "caption", hit.caption || "(no caption)"));
  const clip = hit.clip_score === null || hit.clip_score === undefined ? "" : ` · CLIP ${hit.clip_score.toFixed(3)}`;
  li.append(text("div", "scores", `#${hit.rank} · similarity ${hit.score.toFixed(3)}${clip}`));
  li.append(text("div", "meta", `${hit.width}×${hit.height} · key ${hit.key}`));
  if (hit.dup_count > 1) li.append(text("div", "meta dup", `${hit.dup_count} near-duplicate copies`));
  if (typeof hit.url === "string" && /^https?:\/\//i.test(hit.url)) {
    const a = text("a", "meta source", "source");
    a.href = hit.url;
    a.rel = "noopener noreferrer";
    li.append(a);
  }
  const like = text("button", "like", "More like this");
  like.type = "button";
  like.setAttribute("aria-label", `More like this: ${hit.caption || "picture " + hit.id}`);
  like.addEventListener("click", () => start({kind: "id", value: hit.id}));
  li.append(like);
  results.append(li);
}

function showVideos(videos) {
  const section = $("videos"), list = $("video-list");
  list.replaceChildren();
  section.hidden = !videos || videos.length === 0;
  for (const video of videos || []) {
    const li = document.createElement("li");
    li.className = "video";
    li.append(text("h3", "", `${video.rank}. ${video.name} · similarity ${video.score.toFixed(3)} · ${video.duration.toFixed(1)} s`));
    const strip = document.createElement("div");
    strip.className = "strip";
    for (const frame of video.frames) {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.src = frame.image;
      img.alt = `${video.name} at ${frame.time.toFixed(1)} s`;
      fig.append(img, text("figcaption", "", `${frame.time.toFixed(1)} s`));
      strip.append(fig);
    }
    li.append(strip);
    list.append(li);
  }
}

async function load() {
  if (!query || loading || (offset > 0 && !more)) return;
  loading = true;
  const mine = generation;
  try {
    const response = await ask({k: PAGE, offset});
    const reply = await response.json();
    if (mine !== generation) return; // a newer query started meanwhile
    if (!response.ok) {
      say(reply.error || `error ${response.status}`, true);
      more = false;
      return;
    }
    if (offset === 0) showVideos(reply.videos);
    reply.results.forEach(showHit);
    offset += reply.results.length;
    more = reply.more;
    const what = query.kind === "text" ? `“${query.value}”` : query.kind === "id" ? `more like #${query.value}` : "the uploaded picture";
    say(offset ? `${offset} results for ${what}${more ? " (scroll for more)" : ""}` : `No results for ${what}.`);
    $("download-json").disabled = $("download-parquet").disabled = offset === 0;
  } catch (err) {
    if (mine === generation) say(`The server did not answer (${err.message}).`, true);
  } finally {
    if (mine === generation) loading = false;
  }
  if (more && nearBottom()) load();
}

function nearBottom() {
  return $("sentinel").getBoundingClientRect().top < window.innerHeight + 400;
}

function start(next) {
  query = next;
  generation += 1;
  offset = 0;
  more = false;
  loading = false;
  results.replaceChildren();
  showVideos([]);
  keepInUrl();
  say("Searching…");
  if (next.kind === "id") results.focus();
  load();
}

function rerun() { if (query) start(query); }

async function download(format) {
  const response = await ask({k: Math.max(offset, PAGE), offset: 0, format});
  if (!response.ok) {
    const reply = await response.json();
    say(reply.error || `error ${response.status}`, true);
    return;
  }
  const blob = await response.blob();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `results.${format}`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const words = box.value.trim();
  if (!words) { say("Type a few words first, or search by image.", true); return; }
  start({kind: "text", value: words});
});
upload.addEventListener("change", () => {
  const file = upload.files[0];
  if (!file) return;
  uploaded = file;
  box.value = "";
  start({kind: "upload", value: file.name});
});
document.querySelectorAll("input[name=index]").forEach((el) => el.addEventListener("change", rerun));
dedup.addEventListener("change", rerun);
minScore.addEventListener("input", () => {
  const m = minScoreSetting();
  minScoreValue.textContent = m === null ? "off" : m.toFixed(2);
});
minScore.addEventListener("change", rerun);
$("download-json").addEventListener("click", () => download("json"));
$("download-parquet").addEventListener("click", () => download("parquet"));
document.addEventListener("keydown", (event) => {
  const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement;
  if (event.key === "/" && !typing) { event.preventDefault(); box.focus(); }
});
new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) load();
}, {rootMargin: "400px"}).observe($("sentinel"));

// A shared link reruns its query: ?q=words or ?like=id, with index, dedup and min.
(function fromUrl() {
  const p = new URLSearchParams(location.search);
  const index = p.get("index");
  if (index) { const radio = document.querySelector(`input[name=index][value="${CSS.escape(index)}"]`); if (radio) radio.checked = true; }
  dedup.checked = p.get("dedup") === "1";
  if (p.get("min") !== null && !Number.isNaN(parseFloat(p.get("min")))) {
    minScore.value = p.get("min");
    minScoreValue.textContent = parseFloat(minScore.value).toFixed(2);
  }
  if (p.get("q")) { box.value = p.get("q"); start({kind: "text", value: p.get("q")}); }
  else if (p.get("like") && /^\d+$/.test(p.get("like"))) start({kind: "id", value: parseInt(p.get("like"), 10)});
})();
