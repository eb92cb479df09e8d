// Drives two running tincan nodes with the official Parse JS SDK (npm
// package `parse`), as an app would: started by tests/tests/parse_sdk.rs,
// which passes the nodes' API URLs in TINCAN_A_URL and TINCAN_B_URL.
//
// Checks: sign-up, login, a Room, two Channels, a query of the channels by
// room pointer, RoomLog entries, a LiveQuery subscription on node A that
// receives an event caused by a write on node B (through gossip), and
// another user's attempt to delete a channel failing with code 119.
// Measures (printed as FIGURE lines): REST create-RoomLog latency, and the
// delay from a write on node B to the LiveQuery event on node A.
'use strict';

const assert = require('node:assert/strict');
const Parse = require('parse/node');

const A = process.env.TINCAN_A_URL;
const B = process.env.TINCAN_B_URL;
if (!A || !B) {
  console.error('set TINCAN_A_URL and TINCAN_B_URL (tests/tests/parse_sdk.rs does)');
  process.exit(2);
}
const APP = 'tincan-sdk-test';
const LATENCY_WRITES = Number(process.env.TINCAN_LATENCY_WRITES || 200);
const REMOTE_WRITES = Number(process.env.TINCAN_REMOTE_WRITES || 30);

function on(server) {
  Parse.CoreManager.set('SERVER_URL', `${server}/parse`);
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function percentile(sorted, p) {
  const i = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, i)];
}

function figure(what, samples) {
  const s = [...samples].sort((x, y) => x - y);
  const f = (ms) => ms.toFixed(2);
  console.log(`FIGURE ${what}: n=${s.length} p50=${f(percentile(s, 50))} ms p99=${f(percentile(s, 99))} ms max=${f(s[s.length - 1])} ms`);
}

async function eventually(what, ms, f) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function main() {
  Parse.initialize(APP);
  const Room = Parse.Object.extend('Room');
  const Channel = Parse.Object.extend('Channel');
  const RoomLog = Parse.Object.extend('RoomLog');

  // Alice signs up on node A, then logs in again: a new session each time.
  on(A);
  const alice = new Parse.User();
  alice.set('username', 'alice');
  alice.set('password', 'alice-pw');
  await alice.signUp();
  assert.match(alice.id, /^[0-9a-f]{64}$/);
  const again = await Parse.User.logIn('alice', 'alice-pw');
  assert.equal(again.id, alice.id);
  assert.notEqual(again.getSessionToken(), alice.getSessionToken());
  await assert.rejects(Parse.User.logIn('alice', 'wrong'), (e) => e.code === Parse.Error.OBJECT_NOT_FOUND);
  const asAlice = { sessionToken: again.getSessionToken() };
  const me = await Parse.User.me(again.getSessionToken());
  assert.equal(me.get('username'), 'alice');

  // A room and two channels.
  const room = new Room();
  room.set('title', 'SDK room');
  await room.save(null, asAlice);
  assert.match(room.id, /^[0-9a-f]{32}$/);
  const general = new Channel({ name: 'general', room });
  await general.save(null, asAlice);
  const afk = new Channel({ name: 'afk', description: 'away from keyboard', room });
  await afk.save(null, asAlice);

  // The channels, by room pointer.
  const byRoom = new Parse.Query(Channel).equalTo('room', room).ascending('name');
  const channels = await byRoom.find(asAlice);
  assert.deepEqual(channels.map((c) => c.get('name')), ['afk', 'general']);
  assert.equal(channels[0].get('room').id, room.id);
  assert.equal(await new Parse.Query(Channel).equalTo('room', room).count(asAlice), 2);

  // Log entries.
  for (const action of ['alice opened the room', 'alice made two channels']) {
    await new RoomLog({ room, action }).save(null, asAlice);
  }
  const logs = await new Parse.Query(RoomLog).equalTo('room', room).ascending('createdAt').include('user').find(asAlice);
  assert.deepEqual(logs.map((l) => l.get('action')), ['alice opened the room', 'alice made two channels']);
  assert.equal(logs[0].get('user').id, alice.id);
  assert.equal(logs[0].get('user').get('username'), 'alice');
  // saveAll goes through /parse/batch; dates and $in through where.
  const since = logs[1].createdAt;
  await Parse.Object.saveAll(['lap 1', 'lap 2', 'lap 3'].map((action) => new RoomLog({ room, action })), asAlice);
  const laps = await new Parse.Query(RoomLog)
    .equalTo('room', room)
    .greaterThanOrEqualTo('createdAt', since)
    .containedIn('action', ['lap 1', 'lap 3', 'nope'])
    .ascending('action')
    .find(asAlice);
  assert.deepEqual(laps.map((l) => l.get('action')), ['lap 1', 'lap 3']);

  // Bob signs up on node B and joins alice's room by its id: node B fetches
  // the room from node A.
  on(B);
  const bob = new Parse.User();
  bob.set('username', 'bob');
  bob.set('password', 'bob-pw');
  await bob.signUp();
  const asBob = { sessionToken: bob.getSessionToken() };
  const roomOnB = Room.createWithoutData(room.id);
  roomOnB.addUnique('members', bob);
  await roomOnB.save(null, asBob);
  await roomOnB.fetch(asBob);
  assert.equal(roomOnB.get('title'), 'SDK room');
  // Same objectIds on every node; users known to the mesh include alice.
  const aliceOnB = await eventually('alice\'s profile reaching node B', 20000, () =>
    new Parse.Query(Parse.User).equalTo('username', 'alice').first(asBob),
  );
  assert.equal(aliceOnB.id, alice.id);
  const named = await new Parse.Query(Room).select('title').get(room.id, asBob);
  assert.equal(named.get('title'), 'SDK room');
  assert.equal(named.get('owner'), undefined);

  // Alice, on node A, subscribes to bob's entries in the room.
  on(A);
  const client = new Parse.LiveQueryClient({
    applicationId: APP,
    serverURL: `${A.replace(/^http/, 'ws')}/parse`,
    sessionToken: asAlice.sessionToken,
  });
  client.on('error', (e) => console.error('LiveQuery client error:', e));
  client.open();
  const bobsEntries = new Parse.Query(RoomLog).equalTo('room', room).equalTo('user', bob);
  const sub = await client.subscribe(bobsEntries, asAlice.sessionToken);
  await withTimeout(new Promise((r) => sub.on('open', r)), 10000, 'LiveQuery subscription');
  const events = [];
  let waiter = null;
  sub.on('create', (obj) => {
    events.push({ obj, at: performance.now() });
    if (waiter) waiter();
  });
  const nextEvent = (ms) =>
    withTimeout(
      new Promise((resolve) => {
        const check = () => {
          if (events.length) {
            waiter = null;
            resolve(events.shift());
          }
        };
        waiter = check;
        check();
      }),
      ms,
      'LiveQuery event from node B',
    );

  // Bob writes on node B; alice's subscription on node A hears of it.
  on(B);
  const delays = [];
  for (let i = 0; i < REMOTE_WRITES; i++) {
    const started = performance.now();
    await new RoomLog({ room: roomOnB, action: `bob says hi ${i}` }).save(null, asBob);
    const ev = await nextEvent(20000);
    assert.equal(ev.obj.get('action'), `bob says hi ${i}`);
    assert.equal(ev.obj.get('user').id, bob.id);
    delays.push(ev.at - started);
  }
  console.log(`LiveQuery on node A received ${delays.length} entries written on node B`);

  // Bob may not delete alice's channel: 119, and it is still there on both nodes.
  const channelOnB = await eventually('the channels reaching node B', 20000, async () => {
    const found = await new Parse.Query(Channel).equalTo('room', roomOnB).find(asBob);
    return found.length === 2 ? found.find((c) => c.get('name') === 'general') : null;
  });
  await assert.rejects(channelOnB.destroy(asBob), (e) => {
    assert.equal(e.code, Parse.Error.OPERATION_FORBIDDEN, `expected 119, got ${e.code}: ${e.message}`);
    return true;
  });
  assert.equal(await new Parse.Query(Channel).equalTo('room', roomOnB).count(asBob), 2);
  on(A);
  assert.equal(await new Parse.Query(Channel).equalTo('room', room).count(asAlice), 2);

  // REST create-RoomLog latency on loopback, plain HTTP with X-Parse headers.
  const samples = [];
  for (let i = 0; i < LATENCY_WRITES; i++) {
    const started = performance.now();
    const r = await fetch(`${A}/parse/classes/RoomLog`, {
      method: 'POST',
      headers: {
        'X-Parse-Application-Id': APP,
        'X-Parse-Session-Token': asAlice.sessionToken,
        'Content-Type': 'application/json',
      },
      body: JSON.stringify({ room: { __type: 'Pointer', className: 'Room', objectId: room.id }, action: `tick ${i}` }),
    });
    const body = await r.json();
    samples.push(performance.now() - started);
    assert.equal(r.status, 201, JSON.stringify(body));
  }

  // Logout ends the session.
  await Parse.User.logOut().catch(() => {});
  const logout = await fetch(`${A}/parse/logout`, {
    method: 'POST',
    headers: { 'X-Parse-Application-Id': APP, 'X-Parse-Session-Token': alice.getSessionToken() },
  });
  assert.equal(logout.status, 200);
  await assert.rejects(Parse.User.me(alice.getSessionToken()), (e) => e.code === Parse.Error.INVALID_SESSION_TOKEN);

  client.close();
  figure('REST create RoomLog on loopback (plain HTTP, node A)', samples);
  figure('write on node B to LiveQuery create event on node A', delays);
  console.log('parse sdk: all checks passed');
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error('FAILED:', e && e.stack ? e.stack : e);
    process.exit(1);
  },
);
