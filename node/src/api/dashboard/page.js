// The hivemesh dashboard: reads this node's API (same origin) and renders
// it. Data is only ever written with textContent, never as HTML.
'use strict';

const POLL_MS = 2000;
const EVENTS_KEPT = 200;
const $ = (css) => document.querySelector(css);

// The bearer token: from `#token=...` (then removed from the address bar),
// or the token field; kept for this tab only.
let token = null;
try { token = sessionStorage.getItem('hivemesh-token'); } catch (e) { token = null; }
const fromFragment = /(?:^#|&)token=([^&]*)/.exec(location.hash);
if (fromFragment) {
  token = decodeURIComponent(fromFragment[1]);
  saveToken();
  history.replaceState(null, '', location.pathname + location.search);
}

function saveToken() {
  try { sessionStorage.setItem('hivemesh-token', token); } catch (e) { /* private mode */ }
}

class NeedsToken extends Error {}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h.Authorization = 'Bearer ' + token;
  return h;
}

// One API call; JSON back, or an Error with the API's message.
async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(path, opts);
  if (response.status === 401) throw new NeedsToken('this API needs its bearer token');
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.error && body.error.message;
    throw new Error(message || response.status + ' ' + response.statusText);
  }
  return body;
}

// An element with attributes and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'title') node.title = value;
    else if (key.startsWith('data-')) node.dataset[key.slice(5).replace(/-(\w)/g, (m, c) => c.toUpperCase())] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const short = (peer) => (peer ? String(peer).slice(0, 6) + '…' + String(peer).slice(-4) : '?');
const peerTag = (peer) => el('span', { class: 'tag' + (peer === me ? ' me' : ''), title: peer }, peer === me ? 'me · ' + short(peer) : short(peer));
const pill = (text) => el('span', { class: 'pill ' + String(text || '').toLowerCase() }, text || '…');

function ago(ms) {
  if (!ms) return '—';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  return Math.round(s / 3600) + ' h ago';
}

const seconds = (ms) => (ms === null || ms === undefined ? '—' : (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s');

function setConnection(state, text) {
  const c = $('#conn');
  c.className = 'pill ' + state;
  c.textContent = text;
  $('#token-form').hidden = state !== 'token';
}

// ---- members, status, quota, equivocation (polled) ----

let me = null;

function renderMembers(swim, registry) {
  const known = new Map();
  for (const m of [registry.me].concat(registry.members || [])) known.set(m.peer_id, m);
  const rows = [swim.me].concat(swim.members || []).map((m) => Object.assign({}, known.get(m.peer_id) || {}, m, {
    models: m.models && m.models.length ? m.models : (known.get(m.peer_id) || {}).models,
    gpu: m.gpu || (known.get(m.peer_id) || {}).gpu,
    load: m.load !== undefined ? m.load : (known.get(m.peer_id) || {}).load,
    role: m.role || (known.get(m.peer_id) || {}).role,
  }));
  const body = $('#members tbody');
  body.replaceChildren(...rows.map((m) => el('tr', { 'data-peer': m.peer_id, 'data-state': m.state, class: m.peer_id === me ? 'me' : '' },
    el('td', {}, peerTag(m.peer_id)),
    el('td', {}, pill(m.state)),
    el('td', {}, m.role || '—'),
    el('td', { class: 'mono' }, (m.addresses || []).map((a) => el('div', {}, a))),
    el('td', { class: 'mono' }, m.path ? m.path : el('span', { class: 'muted' }, m.peer_id === me ? 'this node' : 'no connection')),
    el('td', {}, (m.models || []).length ? m.models.map((x) => el('span', { class: 'tag' }, x)) : el('span', { class: 'muted' }, 'none')),
    el('td', {}, m.gpu ? m.gpu.name + ' (' + Math.round(m.gpu.memory_mb / 1024) + ' GiB)' : el('span', { class: 'muted' }, 'none')),
    el('td', {}, m.load === undefined || m.load === null ? '—' : String(m.load)),
    el('td', { class: 'muted' }, ago(m.last_change_ms)))));
  const alive = rows.filter((m) => m.state === 'alive').length;
  $('#members-count').textContent = alive + ' alive of ' + rows.length + ' · view ' + swim.view + ' (active: ' + swim.active_view + ')';
}

function renderStatus(status) {
  me = status.peer_id;
  $('#me').textContent = status.peer_id;
  $('#summary').textContent = 'up ' + seconds(status.uptime_ms) + ' · ' + status.active_members + ' active member(s)' + (status.swarm_key ? ' · private swarm ' + status.swarm_key : '');
  const quota = status.quota;
  const body = $('#quota tbody');
  if (!quota) {
    body.replaceChildren();
    $('#quota-none').textContent = 'this node takes no part in jobs';
    $('#quota-none').hidden = false;
    return;
  }
  const limit = (value) => (value === null || value === undefined ? '∞' : value);
  $('#quota-window').textContent = 'per ' + Math.round(quota.window_s / 60) + ' min · default ' + limit(quota.default.calls) + ' calls, ' + limit(quota.default.tokens) + ' tokens, $' + limit(quota.default.usd);
  body.replaceChildren(...quota.peers.map((p) => el('tr', { 'data-peer': p.peer },
    el('td', {}, peerTag(p.peer)),
    el('td', {}, p.hour.calls + ' / ' + limit(p.limits.calls)),
    el('td', {}, p.hour.tokens + ' / ' + limit(p.limits.tokens)),
    el('td', {}, p.hour.usd.toFixed(4) + ' / ' + limit(p.limits.usd)),
    el('td', {}, Object.entries(p.refused || {}).map(([k, v]) => k + ' ' + v).join(', ') || '0'))));
  $('#quota-none').hidden = quota.peers.length > 0;
}

function renderByzantine(report) {
  $('#byzantine-summary').textContent = report.proofs.length
    ? report.detections + ' detection(s) since start; ' + report.excluded.length + ' peer(s) excluded'
    : 'no equivocation seen: every voter signed one ballot per job';
  $('#byzantine').replaceChildren(...report.proofs.map((p) => el('li', { 'data-peer': p.peer },
    peerTag(p.peer), ' signed two ballots in job ', el('span', { class: 'mono' }, short(p.job)), ' · ', ago(p.learned_ms), ' ',
    pill(p.cleared ? 'cleared' : 'excluded'))));
}

let jobsSeen = [];

function renderJobs(rows) {
  rows.sort((a, b) => (b.created_ms || 0) - (a.created_ms || 0));
  jobsSeen = rows;
  const list = $('#jobs');
  if (!rows.length) {
    list.replaceChildren(el('li', { class: 'muted' }, 'no jobs yet'));
    return;
  }
  list.replaceChildren(...rows.map((row) => {
    const job = row.job;
    const item = el('li', { 'data-job': job.id, class: job.id === selected ? 'selected' : '' },
      pill(job.status), el('span', { class: 'q', title: job.question || '' }, job.question || job.id),
      el('span', { class: 'muted' }, job.mode || ''), el('span', { class: 'muted' }, ago(row.created_ms)));
    item.addEventListener('click', () => { pinned = true; select(job.id); });
    return item;
  }));
}

async function poll() {
  try {
    const [status, swim, registry, jobs, byzantine] = await Promise.all([
      api('/v1/status'), api('/v1/members?view=swim'), api('/v1/members?view=registry'),
      api('/v1/jobs?limit=30'), api('/v1/byzantine'),
    ]);
    renderStatus(status);
    renderMembers(swim, registry);
    renderJobs(jobs.jobs);
    renderByzantine(byzantine);
    setConnection('live', 'live');
    const newest = jobsSeen[0];
    if (newest && !pinned && newest.job.id !== selected) select(newest.job.id);
  } catch (e) {
    if (e instanceof NeedsToken) setConnection('token', token ? 'wrong token' : 'needs token');
    else setConnection('error', 'unreachable: ' + e.message);
  }
}

// ---- one job, followed live ----

let selected = null;
let pinned = false;
let following = null;   // AbortController of the event stream
let job = null;         // the last GET /v1/jobs/{id}
let ballots = new Map(); // voter -> ballot event body
let live = new Map();    // 'peer|part' -> {peer, part, attempt, text} streamed so far
let refetch = null;

function select(id) {
  if (following) following.abort();
  selected = id;
  job = null;
  ballots = new Map();
  live = new Map();
  $('#events').replaceChildren();
  for (const li of document.querySelectorAll('#jobs li[data-job]')) li.classList.toggle('selected', li.dataset.job === id);
  $('#job').hidden = false;
  loadJob(id);
  follow(id);
}

async function loadJob(id) {
  try {
    const fresh = await api('/v1/jobs/' + id);
    if (id !== selected) return;
    job = fresh;
    renderJob();
  } catch (e) {
    if (e instanceof NeedsToken) setConnection('token', 'needs token');
  }
}

function scheduleLoad() {
  if (refetch) return;
  refetch = setTimeout(() => { refetch = null; loadJob(selected); }, 120);
}

// The job's server-sent events, read with fetch (EventSource cannot send
// the Authorization header).
async function follow(id) {
  const controller = new AbortController();
  following = controller;
  try {
    const response = await fetch('/v1/jobs/' + id + '/events', { headers: headers({ Accept: 'text/event-stream' }), signal: controller.signal });
    if (!response.ok || !response.body) return;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) name = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
        }
        if (data.length && id === selected) onEvent(name, JSON.parse(data.join('\n')));
      }
    }
  } catch (e) {
    if (e.name !== 'AbortError') addEvent('error', null, e.message);
  }
}

function onEvent(name, data) {
  if (name === 'tokens') {
    const key = data.peer + '|' + data.part;
    const known = live.get(key);
    const fresh = !known || data.attempt > known.attempt;
    live.set(key, { peer: data.peer, part: data.part, attempt: data.attempt, text: (fresh ? '' : known.text) + data.text });
    renderCandidates();
    return;
  }
  if (name === 'ballot' && data.body) {
    ballots.set(data.body.voter || data.peer, data.body);
    if (job) renderBallots();
  }
  const detail = name === 'failure' ? (data.body && (data.body.reason || data.body.part)) :
    name === 'candidate' ? (data.body && data.body.tokens + ' tokens') :
    name === 'outcome' ? (data.body && data.body.status) : '';
  addEvent(name, data.peer, detail);
  scheduleLoad();
}

function addEvent(name, peer, detail) {
  const list = $('#events');
  const time = new Date().toLocaleTimeString();
  list.append(el('li', { 'data-event': name }, el('span', { class: 'muted' }, time + ' '), el('span', { class: 'name' }, name), ' ', peer ? short(peer) : '', detail ? ' · ' + detail : ''));
  while (list.children.length > EVENTS_KEPT) list.firstChild.remove();
  list.scrollTop = list.scrollHeight;
}

// Candidate index -> its author, from the round.
function candidateName(index) {
  const round = job && job.round;
  const peer = round && round.candidates[index];
  return peer ? short(peer) : '#' + index;
}

function choiceText(choice) {
  if (choice === null || choice === undefined) return '—';
  if (typeof choice !== 'object') return String(choice);
  const [kind, value] = Object.entries(choice)[0] || ['?', null];
  const names = (v) => (Array.isArray(v) ? v.map((x) => (Array.isArray(x) ? '(' + names(x) + ')' : candidateName(x))).join(' > ') : candidateName(v));
  return kind.toLowerCase() + ': ' + names(value);
}

function renderJob() {
  if (!job) return;
  const spec = job.spec || {};
  const outcome = job.outcome;
  $('#job').dataset.id = job.id;
  $('#job').dataset.status = job.status;
  $('#job-id').textContent = short(job.id);
  $('#job-id').title = job.id;
  $('#job-status').replaceWith(Object.assign(pill(job.status), { id: 'job-status' }));
  $('#job-meta').textContent = [spec.mode, spec.rule && 'rule ' + JSON.stringify(spec.rule).replace(/"/g, ''), spec.quorum && 'quorum ' + spec.quorum,
    spec.participants && spec.participants.length + ' participants', job.asker && 'asked by ' + short(job.asker),
    outcome && 'in ' + seconds(outcome.elapsed_ms)].filter(Boolean).join(' · ');
  const question = spec.question && spec.question.length ? spec.question[spec.question.length - 1].content : '';
  $('#job-question').textContent = question;
  const answer = $('#job-answer');
  answer.hidden = !outcome;
  if (outcome) {
    answer.className = 'answer' + (outcome.answer ? '' : ' error');
    answer.textContent = outcome.answer || outcome.error || outcome.status;
    answer.dataset.winner = outcome.winner || '';
  }
  renderCandidates();
  renderBallots();
  renderTally();
  renderLeftOut();
}

// One row per part that makes text: council candidates, pipeline stages,
// and any part still streaming (the curator's text goes to the answer box).
function renderCandidates() {
  if (!job) return;
  const outcome = job.outcome;
  const written = (outcome && outcome.contributions) || [];
  const round = (job.round && job.round.candidates) || [];
  const winner = outcome && outcome.winner;
  const rows = [];
  const covered = new Set();
  for (const c of job.candidates) {
    covered.add(c.peer + '|candidate');
    const w = written.find((x) => x.peer === c.peer && x.part.startsWith('candidate'));
    const index = round.indexOf(c.peer);
    rows.push({ peer: c.peer, order: index, label: index >= 0 ? '#' + index + (c.peer === winner ? ' ★' : '') : '…', out: c, text: w ? w.text : liveText(c.peer, 'candidate'), streaming: false, winner: c.peer === winner });
  }
  rows.sort((a, b) => (a.order < 0 ? 1e9 : a.order) - (b.order < 0 ? 1e9 : b.order));
  for (const s of job.stages || []) {
    covered.add(s.peer + '|' + s.stage);
    const w = written.find((x) => x.peer === s.peer && x.part.includes(s.stage));
    rows.push({ peer: s.peer, label: s.stage, out: s, text: w ? w.text : liveText(s.peer, s.stage), streaming: false, winner: false });
  }
  for (const [key, part] of live) {
    if (covered.has(key) || part.part === 'curator') continue;
    rows.push({ peer: part.peer, label: part.part === 'candidate' ? '…' : part.part, out: {}, text: part.text, streaming: true, winner: false });
  }
  $('#candidates tbody').replaceChildren(...rows.map((r) => el('tr', { 'data-peer': r.peer, class: r.winner ? 'winner' : '' },
    el('td', { class: 'muted' }, r.label), el('td', {}, peerTag(r.peer)), el('td', { class: 'mono' }, r.out.model || '…'),
    el('td', {}, r.out.tokens === undefined ? '…' : String(r.out.tokens)), el('td', {}, seconds(r.out.elapsed_ms)),
    el('td', {}, el('div', { class: 'text' + (r.streaming ? ' streaming' : '') }, r.text || '')))));
  const curator = [...live.values()].find((p) => p.part === 'curator');
  if (!outcome && curator) {
    const answer = $('#job-answer');
    answer.hidden = false;
    answer.className = 'answer streaming';
    answer.textContent = curator.text;
  }
}

function liveText(peer, part) {
  const streamed = live.get(peer + '|' + part);
  return streamed ? streamed.text : '';
}

function renderBallots() {
  const rows = job.ballots.map((b) => {
    const detail = ballots.get(b.voter) || {};
    return el('tr', { 'data-voter': b.voter },
      el('td', {}, peerTag(b.voter)), el('td', {}, detail.rule || '…'),
      el('td', { class: 'mono' }, choiceText(detail.choice)), el('td', {}, detail.weight === undefined ? '…' : String(detail.weight)));
  });
  $('#ballots tbody').replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { class: 'muted', colspan: 4 }, job.round ? 'waiting for ballots' : 'voting has not started'))]));
}

// A bar `width` px wide (CSSOM, which the page's style policy allows).
function bar(width) {
  const node = el('span', { class: 'bar' });
  node.style.width = width + 'px';
  return node;
}

function renderTally() {
  const box = $('#tally');
  const outcome = job.outcome;
  if (!outcome || !outcome.tally) {
    box.className = 'muted';
    box.textContent = job.round ? 'voting: ' + job.ballots.length + ' ballot(s) in' : 'no tally yet';
    return;
  }
  box.className = '';
  const tally = outcome.tally;
  const result = tally.result || tally;
  const ranking = result.ranking || [];
  const scores = result.scores || [];
  const top = Math.max(1, ...scores.map((s) => Number(s) || 0));
  const label = (entry) => (typeof entry === 'object' && entry !== null ? (entry.label || entry.peer || JSON.stringify(entry)) : candidateName(entry));
  const list = el('ol', { class: 'ranking' }, ranking.map((entry, i) => {
    const index = typeof entry === 'object' && entry !== null ? entry.index : entry;
    const score = scores[index];
    return el('li', {}, label(entry), score === undefined ? '' : el('span', { class: 'muted' }, ' ' + score),
      score === undefined ? '' : bar(Math.round(60 * (Number(score) || 0) / top)),
      i === 0 ? ' ★' : '');
  }));
  box.replaceChildren(
    el('div', { 'data-winner': outcome.winner || '' }, 'winner ', outcome.winner ? peerTag(outcome.winner) : '—',
      outcome.curation ? el('span', { class: 'muted' }, ' · answer: ' + ({ rewrite: 'curator rewrote it', select: 'a candidate as written', fallback: 'curator failed, winner stands' }[outcome.curation] || outcome.curation)) : ''),
    list,
    el('details', {}, el('summary', {}, 'tally as published'), el('pre', {}, JSON.stringify(tally, null, 1))));
}

function renderLeftOut() {
  const items = [];
  const outcome = job.outcome || {};
  for (const m of outcome.missing || []) items.push(el('li', {}, peerTag(m.peer), ' missing: ', m.reason, m.code ? ' (' + m.code + ')' : ''));
  for (const x of outcome.excluded || []) items.push(el('li', {}, peerTag(x.voter || x.peer), ' ballot excluded: ', x.reason || JSON.stringify(x)));
  for (const f of job.failures || []) items.push(el('li', {}, peerTag(f.peer), ' failed ', f.part || '', ': ', f.reason || '', f.code ? ' (' + f.code + ')' : ''));
  for (const r of job.reassigned || []) items.push(el('li', {}, 'stage ', r.stage, ' → ', peerTag(r.to), ': ', r.reason || ''));
  if (job.round && job.round.missing && !outcome.missing) items.push(el('li', {}, String(job.round.missing), ' candidate(s) missing at the round'));
  $('#left-out').replaceChildren(...(items.length ? items : [el('li', { class: 'muted' }, 'nobody: every participant answered and voted')]));
}

// ---- asking ----

$('#ask').addEventListener('submit', async (event) => {
  event.preventDefault();
  const button = $('#ask-button');
  const error = $('#ask-error');
  error.hidden = true;
  button.disabled = true;
  try {
    const body = { question: $('#question').value.trim(), mode: $('#mode').value };
    const peers = parseInt($('#peers').value, 10);
    if (!Number.isNaN(peers)) body.peers = peers;
    const answer = await api('/v1/jobs', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    pinned = true;
    select(answer.id);
    poll();
  } catch (e) {
    error.textContent = e instanceof NeedsToken ? 'this API needs its bearer token' : e.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
});

$('#token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  token = $('#token').value.trim() || null;
  saveToken();
  setConnection('connecting', 'connecting');
  poll();
  if (selected) select(selected);
});

poll();
setInterval(poll, POLL_MS);
