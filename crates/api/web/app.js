// tincan's web control panel. One module, no build step: it speaks the
// node's own API (Parse REST and LiveQuery under /parse, /v1 and the
// /v1/events WebSocket) from the node's origin. Everything live comes from
// the two WebSockets; a REST poll of /v1/status only tells whether the node
// is still there.

const APP_ID = 'tincan-web';
const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem('tincan.session'),
  me: null,            // {objectId, username, fingerprint}
  rooms: new Map(),    // objectId -> Room JSON
  channels: new Map(), // objectId -> Channel JSON
  presence: new Map(), // channel objectId -> user objectIds in its voice
  presenceKey: '',
  logs: [],            // RoomLog JSON of the selected room, newest first
  users: new Map(),    // objectId -> username (or a pending promise)
  selected: sessionStorage.getItem('tincan.room'),
  voice: null,         // the last status event
  speaking: new Set(), // user hex ids speaking now
  devices: null,
};

// ---------- helpers ----------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const pointer = (className, objectId) => ({ __type: 'Pointer', className, objectId });
const short = (hex) => (hex ? `${hex.slice(0, 8)}…` : '?');

class ApiError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

async function api(method, path, body) {
  const headers = { 'X-Parse-Application-Id': APP_ID };
  if (state.token) headers['X-Parse-Session-Token'] = state.token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    setReachable(false);
    throw new ApiError(-1, 'the node is not reachable');
  }
  setReachable(true);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    if (data.code === 209 && state.token) logout(false);
    throw new ApiError(data.code ?? res.status, data.error || `HTTP ${res.status}`);
  }
  return data;
}

const q = (where, extra = '') => `where=${encodeURIComponent(JSON.stringify(where))}${extra}`;

function showError(id, e) { $(id).textContent = e ? (e.message || String(e)) : ''; }

let reachable = true;
function setReachable(ok) {
  if (ok === reachable) return;
  reachable = ok;
  const b = $('banner');
  b.hidden = ok;
  b.textContent = ok ? '' : 'The tincan node is not reachable. Is `tincan up` still running? Retrying…';
}

// ---------- users ----------

function username(id) {
  if (!id) return '?';
  const known = state.users.get(id);
  if (typeof known === 'string') return known;
  if (!known) {
    state.users.set(id, api('GET', `/parse/users/${id}`).then((u) => {
      state.users.set(id, u.username);
      renderAll();
    }).catch(() => state.users.set(id, short(id))));
  }
  return short(id);
}

// ---------- auth ----------

async function authSubmit(ev) {
  ev.preventDefault();
  const action = ev.submitter?.dataset.action || 'login';
  const u = $('auth-username').value.trim();
  const p = $('auth-password').value;
  showError('auth-error', null);
  try {
    const r = action === 'signup'
      ? await api('POST', '/parse/users', { username: u, password: p })
      : await api('POST', '/parse/login', { username: u, password: p });
    state.token = r.sessionToken;
    sessionStorage.setItem('tincan.session', state.token);
    await start();
  } catch (e) { showError('auth-error', e); }
}

async function logout(callServer = true) {
  if (callServer) await api('POST', '/parse/logout').catch(() => {});
  state.token = null; state.me = null;
  sessionStorage.removeItem('tincan.session');
  live?.close(); events?.close(); live = null; events = null;
  showAuth();
}

function showAuth() {
  $('auth').hidden = false; $('panel').hidden = true;
  $('whoami').replaceChildren();
}

// ---------- data ----------

const isMember = (room) => room.owner?.objectId === state.me.objectId
  || (room.members || []).some((m) => m.objectId === state.me.objectId);

async function loadRooms() {
  const r = await api('GET', `/parse/classes/Room?limit=1000`);
  state.rooms = new Map(r.results.map((x) => [x.objectId, x]));
  if (state.selected && !(state.rooms.has(state.selected) && isMember(state.rooms.get(state.selected)))) state.selected = null;
  if (!state.selected) state.selected = [...state.rooms.values()].find(isMember)?.objectId || null;
  await loadRoomContents();
}

async function loadRoomContents() {
  state.channels = new Map(); state.logs = [];
  const id = state.selected;
  if (id) {
    sessionStorage.setItem('tincan.room', id);
    const where = { room: pointer('Room', id) };
    const [ch, logs] = await Promise.all([
      api('GET', `/parse/classes/Channel?${q(where, '&order=name&limit=1000')}`),
      api('GET', `/parse/classes/RoomLog?${q(where, '&order=-createdAt&limit=100')}`),
    ]);
    if (state.selected !== id) return;
    state.channels = new Map(ch.results.map((x) => [x.objectId, x]));
    state.logs = logs.results;
  }
  renderAll();
}

async function addLog(action) {
  if (!state.selected) return;
  await api('POST', '/parse/classes/RoomLog', { room: pointer('Room', state.selected), action }).catch(() => {});
}

// ---------- actions ----------

async function createRoom(ev) {
  ev.preventDefault();
  showError('rooms-error', null);
  try {
    const r = await api('POST', '/parse/classes/Room', { title: $('new-room-title').value.trim() });
    $('new-room-title').value = '';
    state.selected = r.objectId;
    await loadRooms();
  } catch (e) { showError('rooms-error', e); }
}

async function joinRoom(ev) {
  ev.preventDefault();
  showError('rooms-error', null);
  const id = $('join-room-id').value.trim().toLowerCase();
  try {
    await api('PUT', `/parse/classes/Room/${id}`, {
      members: { __op: 'AddUnique', objects: [pointer('_User', state.me.objectId)] },
    });
    $('join-room-id').value = '';
    state.selected = id;
    await loadRooms();
    await addLog('joined the room');
  } catch (e) { showError('rooms-error', e); }
}

// Open rooms that nodes on this LAN follow (found by mDNS): joined with
// one click, no id typed. Refreshed every few seconds while signed in.
async function loadNearby() {
  if (!state.token) return;
  let rooms = [];
  try { rooms = (await api('GET', '/v1/rooms/nearby')).rooms || []; } catch { return; }
  const mine = new Set([...(state.rooms?.values() || [])].filter(isMember).map((r) => r.objectId));
  const list = $('nearby-list');
  const shown = rooms.filter((r) => !mine.has(r.objectId));
  if (!shown.length) { list.replaceChildren(h('li', { class: 'empty' }, 'No other open rooms on this LAN.')); return; }
  list.replaceChildren(...shown.map((r) => h('li', {},
    h('span', {}, `${r.title} (${r.ownerName || 'owner'} ${r.ownerFingerprint}, ${r.members} members) `),
    h('button', { type: 'button', 'aria-label': `Join ${r.title}`, onclick: () => joinById(r.objectId) }, 'Join'))));
}

async function joinById(id) {
  showError('rooms-error', null);
  try {
    await api('PUT', `/parse/classes/Room/${id}`, {
      members: { __op: 'AddUnique', objects: [pointer('_User', state.me.objectId)] },
    });
    state.selected = id;
    await loadRooms();
    await addLog('joined the room');
    await loadNearby();
  } catch (e) { showError('rooms-error', e); }
}

async function leaveRoom(id) {
  try {
    if (state.selected === id) await addLog('left the room');
    await api('PUT', `/parse/classes/Room/${id}`, {
      members: { __op: 'Remove', objects: [pointer('_User', state.me.objectId)] },
    });
    if (state.selected === id) state.selected = null;
    await loadRooms();
  } catch (e) { showError('rooms-error', e); }
}

async function createChannel(ev) {
  ev.preventDefault();
  showError('room-error', null);
  const input = $('new-channel-name');
  try {
    await api('POST', '/parse/classes/Channel', { room: pointer('Room', state.selected), name: input.value.trim() });
    await addLog(`created channel ${input.value.trim()}`);
    input.value = '';
    await loadRoomContents();
  } catch (e) { showError('room-error', e); }
}

async function deleteChannel(id) {
  try {
    await api('DELETE', `/parse/classes/Channel/${id}`);
    state.channels.delete(id);
    renderRoom();
  } catch (e) { showError('room-error', e); }
}

async function joinVoice(channel) {
  showError('voice-error', null);
  try {
    await api('POST', '/v1/voice/join', { room: channel.room.objectId, channel: channel.objectId });
    await addLog(`joined voice in ${channel.name}`);
    await refreshVoice();
  } catch (e) { showError('voice-error', e); }
}

async function voiceCall(path, body) {
  showError('voice-error', null);
  try { await api('POST', path, body); await refreshVoice(); } catch (e) { showError('voice-error', e); }
}

async function refreshVoice() {
  try { setVoice(await api('GET', '/v1/voice/status')); } catch (e) { /* no voice on this node */ }
}

async function loadDevices() {
  try { state.devices = await api('GET', '/v1/voice/devices'); } catch (e) { state.devices = null; }
  renderDevices();
}

async function chooseDevice(kind, value) {
  showError('voice-error', null);
  try { await api('PUT', '/v1/voice/devices', { [kind]: value }); await loadDevices(); } catch (e) { showError('voice-error', e); }
}

function setVoice(status) {
  const before = state.voice?.channel;
  state.voice = status;
  renderVoice();
  if (before !== status.channel) renderRoom();
}

async function saveProfile(ev) {
  ev.preventDefault();
  showError('profile-error', null);
  const body = {};
  const name = $('profile-username').value.trim();
  const pw = $('profile-password').value;
  if (name && name !== state.me.username) body.username = name;
  if (pw) body.password = pw;
  if (!Object.keys(body).length) return;
  try {
    await api('PUT', `/parse/users/${state.me.objectId}`, body);
    $('profile-password').value = '';
    state.me = await api('GET', '/parse/users/me');
    state.users.set(state.me.objectId, state.me.username);
    $('profile-error').textContent = 'Saved.';
    renderAll();
  } catch (e) { showError('profile-error', e); }
}

// ---------- rendering ----------

function renderAll() { renderWho(); renderRooms(); renderRoom(); renderLog(); renderVoice(); }

function renderWho() {
  if (!state.me) return;
  $('whoami').replaceChildren(
    h('span', {}, 'Signed in as ', h('strong', { id: 'me-name', 'data-user': state.me.objectId }, state.me.username)),
    h('code', { title: 'fingerprint' }, state.me.fingerprint || ''),
    h('button', { type: 'button', class: 'secondary', onclick: () => logout() }, 'Log out'),
  );
  if (document.activeElement !== $('profile-username')) $('profile-username').value = state.me.username;
}

function renderRooms() {
  const mine = [...state.rooms.values()].filter(isMember).sort((a, b) => (a.title || '').localeCompare(b.title || ''));
  const list = $('room-list');
  if (!mine.length) { list.replaceChildren(h('li', { class: 'empty' }, 'No rooms yet: create one or join one by its id.')); return; }
  list.replaceChildren(...mine.map((r) => h('li', { class: `room-item${r.objectId === state.selected ? ' selected' : ''}`, 'data-room': r.objectId },
    h('button', { type: 'button', 'aria-current': r.objectId === state.selected ? 'true' : null,
      onclick: () => { state.selected = r.objectId; loadRoomContents(); } }, r.title || '(untitled)'),
    h('button', { type: 'button', class: 'secondary', 'aria-label': `Leave ${r.title}`, onclick: () => leaveRoom(r.objectId) }, 'Leave'),
  )));
}

function renderRoom() {
  const room = state.rooms.get(state.selected);
  const body = $('room-body');
  if (!room) { $('room-title').textContent = 'No room selected'; body.replaceChildren(); return; }
  $('room-title').textContent = room.title || '(untitled)';
  const owner = room.owner?.objectId === state.me.objectId;
  const channels = [...state.channels.values()].filter((c) => c.room?.objectId === room.objectId)
    .sort((a, b) => (a.name || '').localeCompare(b.name || ''));
  const inVoice = state.voice?.channel;
  body.replaceChildren(...[
    h('p', {}, 'Id ', h('code', { id: 'room-id' }, room.objectId)),
    h('p', {}, 'Owner ', h('strong', { id: 'room-owner' }, username(room.owner?.objectId))),
    h('h3', {}, 'Members'),
    h('div', { id: 'members' }, (room.members || []).map((m) => h('span', { class: 'member' }, username(m.objectId)))),
    h('h3', {}, 'Voice channels'),
    h('ul', { id: 'channel-list', class: 'list' }, channels.length ? channels.map((c) => h('li', { 'data-channel': c.objectId },
      h('span', {}, c.objectId === inVoice ? '▶ ' : '# ', h('span', { class: 'channel-name' }, c.name),
        h('span', { class: 'in-voice', 'data-in-voice': c.objectId },
          (state.presence.get(c.objectId) || []).map((u) => h('span', { class: 'member' }, username(u))))),
      h('span', { class: 'row' },
        c.objectId === inVoice
          ? h('button', { type: 'button', class: 'secondary', onclick: () => voiceCall('/v1/voice/leave') }, 'Leave voice')
          : h('button', { type: 'button', 'aria-label': `Join voice in ${c.name}`, onclick: () => joinVoice(c) }, 'Join voice'),
        owner ? h('button', { type: 'button', class: 'danger', 'aria-label': `Delete channel ${c.name}`, onclick: () => deleteChannel(c.objectId) }, 'Delete') : null),
    )) : h('li', { class: 'empty' }, 'No channels yet.')),
    owner ? h('form', { id: 'create-channel-form', class: 'inline', onsubmit: createChannel },
      h('label', { for: 'new-channel-name' }, 'New channel'),
      h('input', { id: 'new-channel-name', placeholder: 'Name', required: true, maxlength: '64' }),
      h('button', { type: 'submit' }, 'Create')) : null,
    h('p', { id: 'room-error', class: 'error', role: 'status' }),
  ].filter(Boolean));
}

function renderLog() {
  const list = $('log-list');
  if (!state.logs.length) { list.replaceChildren(h('li', { class: 'empty' }, 'Nothing yet.')); return; }
  list.replaceChildren(...state.logs.slice(0, 100).map((l) => h('li', {},
    h('span', {}, h('strong', {}, username(l.user?.objectId)), ' ', l.action),
    h('time', { datetime: l.createdAt }, l.createdAt ? new Date(l.createdAt).toLocaleTimeString() : ''))));
}

function renderVoice() {
  const v = state.voice;
  const joined = v && v.channel;
  const ch = joined && state.channels.get(v.channel);
  $('voice-where').textContent = joined ? `In voice: ${ch ? ch.name : short(v.channel)}`
    : v?.held_by_another_account ? 'Another account of this node is in voice: it must leave before you can join.'
    : 'Not in a voice channel.';
  for (const [id, on] of [['mute-button', v?.muted], ['deafen-button', v?.deafened], ['ptt-button', v?.push_to_talk]]) {
    $(id).setAttribute('aria-pressed', on ? 'true' : 'false');
  }
  $('mute-button').textContent = v?.muted ? 'Unmute' : 'Mute';
  $('deafen-button').textContent = v?.deafened ? 'Undeafen' : 'Deafen';
  $('leave-voice-button').disabled = !joined;
  // Rebuild the participant list only when who is there changes, so a
  // volume slider being dragged is not replaced under the pointer.
  const list = $('participants');
  const others = joined ? v.participants || [] : [];
  const people = joined && !others.some((p) => p.user === state.me?.objectId)
    ? [{ user: state.me.objectId, speaking: false }, ...others] : others;
  const key = people.map((p) => p.user).join(',') + [...state.users.values()].filter((x) => typeof x === 'string').length;
  if (list.dataset.key !== key) {
    list.dataset.key = key;
    list.replaceChildren(...(people.length ? people.map((p) => h('li', { class: 'participant', 'data-user': p.user },
      h('span', { class: 'name' }, username(p.user), p.user === state.me?.objectId ? ' (you)' : ''),
      p.user === state.me?.objectId ? null : h('span', {},
        h('label', { for: `vol-${p.user}`, class: 'sr' }, 'Volume'),
        h('input', { id: `vol-${p.user}`, type: 'range', min: '0', max: '2', step: '0.05', value: String(p.volume ?? 1),
          onchange: (ev) => voiceCall('/v1/voice/volume', { user: p.user, gain: Number(ev.target.value) }) })),
    )) : [h('li', { class: 'empty' }, 'Join a voice channel to talk.')]));
  }
  for (const p of others) if (p.speaking) state.speaking.add(p.user);
  renderSpeaking();
  const tbody = $('links').tBodies[0];
  const links = v?.links || [];
  tbody.replaceChildren(...(links.length ? links.map((l) => h('tr', {},
    h('td', {}, l.user ? username(l.user) : short(l.peer)), h('td', {}, l.path),
    h('td', {}, `${Number(l.rtt_ms).toFixed(1)} ms`), h('td', {}, `${(Number(l.loss) * 100).toFixed(1)} %`),
    h('td', {}, `${Number(l.jitter_ms).toFixed(1)} ms`))) : [h('tr', {}, h('td', { colspan: '5', class: 'empty' }, 'No voice links.'))]));
}

function renderSpeaking() {
  for (const li of $('participants').querySelectorAll('.participant')) {
    const on = state.speaking.has(li.dataset.user);
    li.classList.toggle('speaking', on);
    li.dataset.speaking = on ? 'true' : 'false';
  }
}

function renderDevices() {
  const d = state.devices;
  for (const [kind, list, cur] of [['input', d?.inputs, d?.input], ['output', d?.outputs, d?.output]]) {
    const sel = $(`${kind}-device`);
    const names = list || [];
    sel.replaceChildren(...(names.length ? names : [cur || 'default']).map((n) => h('option', { value: n, selected: n === cur }, n)));
    sel.disabled = !d;
  }
}

// ---------- LiveQuery (/parse) ----------

let live = null;
function connectLive() {
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/parse`;
  const ws = new WebSocket(url);
  live = ws;
  const classes = ['Room', 'Channel', 'RoomLog'];
  ws.onopen = () => ws.send(JSON.stringify({ op: 'connect', applicationId: APP_ID, sessionToken: state.token }));
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.op === 'connected') {
      classes.forEach((c, i) => ws.send(JSON.stringify({ op: 'subscribe', requestId: i + 1, sessionToken: state.token, query: { className: c, where: {} } })));
      // Whatever changed while the socket was down.
      loadRooms().catch(() => {});
      return;
    }
    if (msg.op === 'error') { if (msg.reconnect === false) console.warn(msg.error); loadRooms().catch(() => {}); return; }
    const cls = classes[(msg.requestId || 0) - 1];
    if (!cls || !msg.object) return;
    onLiveEvent(cls, msg.op, msg.object);
  };
  ws.onclose = () => {
    if (live !== ws) return;
    live = null;
    setTimeout(() => { if (state.token && !live) connectLive(); }, 1500);
  };
}

function onLiveEvent(cls, op, obj) {
  const gone = op === 'delete' || op === 'leave';
  if (cls === 'Room') {
    if (gone) state.rooms.delete(obj.objectId); else state.rooms.set(obj.objectId, obj);
    if (!state.selected && !gone && isMember(obj)) { state.selected = obj.objectId; loadRoomContents(); return; }
    if (state.selected === obj.objectId && (gone || !isMember(obj))) { state.selected = null; loadRooms(); return; }
    renderRooms(); renderRoom();
  } else if (cls === 'Channel') {
    if (obj.room?.objectId !== state.selected) return;
    if (gone) state.channels.delete(obj.objectId); else state.channels.set(obj.objectId, obj);
    renderRoom();
  } else if (cls === 'RoomLog') {
    if (obj.room?.objectId !== state.selected || gone) return;
    if (!state.logs.some((l) => l.objectId === obj.objectId)) state.logs.unshift(obj);
    renderLog();
  }
}

// ---------- voice events (/v1/events) ----------

let events = null;
function connectEvents() {
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/events?sessionToken=${encodeURIComponent(state.token)}`;
  const ws = new WebSocket(url);
  events = ws;
  ws.onmessage = (m) => {
    const ev = JSON.parse(m.data);
    if (ev.type === 'speaking') {
      if (ev.speaking) state.speaking.add(ev.user); else state.speaking.delete(ev.user);
      renderSpeaking();
    } else if (ev.type === 'status') {
      state.speaking = new Set((ev.participants || []).filter((p) => p.speaking).map((p) => p.user));
      setVoice(ev);
    }
  };
  ws.onclose = () => {
    if (events !== ws) return;
    events = null;
    setTimeout(() => { if (state.token && !events) connectEvents(); }, 3000);
  };
}

// ---------- push to talk ----------

let pttDown = false;
function ptt(down) {
  if (pttDown === down) return;
  pttDown = down;
  $('ptt-button').setAttribute('aria-pressed', down ? 'true' : 'false');
  api('POST', '/v1/voice/ptt', { down }).catch((e) => showError('voice-error', e));
}

function typing(ev) {
  const t = ev.target;
  return t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement;
}

function wireVoiceControls() {
  $('mute-button').addEventListener('click', () => voiceCall('/v1/voice/mute', { muted: !state.voice?.muted }));
  $('deafen-button').addEventListener('click', () => voiceCall('/v1/voice/deafen', { deafened: !state.voice?.deafened }));
  $('leave-voice-button').addEventListener('click', () => voiceCall('/v1/voice/leave'));
  const b = $('ptt-button');
  b.addEventListener('pointerdown', () => ptt(true));
  for (const e of ['pointerup', 'pointerleave', 'pointercancel']) b.addEventListener(e, () => ptt(false));
  b.addEventListener('keydown', (ev) => { if (ev.key === ' ' || ev.key === 'Enter') { ev.preventDefault(); ptt(true); } });
  b.addEventListener('keyup', (ev) => { if (ev.key === ' ' || ev.key === 'Enter') ptt(false); });
  const keySel = $('ptt-key');
  keySel.value = localStorage.getItem('tincan.pttKey') || 'Backquote';
  keySel.addEventListener('change', () => localStorage.setItem('tincan.pttKey', keySel.value));
  window.addEventListener('keydown', (ev) => { if (ev.code === keySel.value && !typing(ev) && !ev.repeat) { ev.preventDefault(); ptt(true); } });
  window.addEventListener('keyup', (ev) => { if (ev.code === keySel.value && !typing(ev)) ptt(false); });
  window.addEventListener('blur', () => ptt(false));
  $('input-device').addEventListener('change', (ev) => chooseDevice('input', ev.target.value));
  $('output-device').addEventListener('change', (ev) => chooseDevice('output', ev.target.value));
}

// ---------- start ----------

async function start() {
  try {
    state.me = await api('GET', '/parse/users/me');
  } catch (e) {
    if (e.code === -1) { setTimeout(start, 2000); return; }
    showAuth();
    return;
  }
  state.users.set(state.me.objectId, state.me.username);
  $('auth').hidden = true; $('panel').hidden = false;
  renderWho();
  await loadRooms().catch((e) => showError('rooms-error', e));
  connectLive();
  connectEvents();
  refreshVoice();
  loadDevices();
}

// Who is in each voice channel of the open room, joined or not: presence
// signals gossiped by every node in a channel, polled every 2 s.
async function refreshPresence() {
  if (!state.token || !state.selected) return;
  try {
    const r = await api('POST', '/v1/voice/presence', { room: state.selected });
    const next = new Map((r.channels || []).map((c) => [c.channel, c.users]));
    const key = JSON.stringify([...next.entries()]);
    if (key !== state.presenceKey) {
      state.presence = next;
      state.presenceKey = key;
      renderRoom();
    }
  } catch (e) { /* no voice on this node, or the room is gone */ }
}
setInterval(refreshPresence, 2000);

// Whether the node is still there (a WebSocket alone can take long to notice).
setInterval(() => {
  fetch('/v1/status', { headers: state.token ? { 'X-Parse-Session-Token': state.token } : {} })
    .then(() => setReachable(true), () => setReachable(false));
}, 3000);

$('auth-form').addEventListener('submit', authSubmit);
$('create-room-form').addEventListener('submit', createRoom);
$('join-room-form').addEventListener('submit', joinRoom);
setInterval(loadNearby, 4000);
$('profile-form').addEventListener('submit', saveProfile);
wireVoiceControls();
if (state.token) start(); else showAuth();
