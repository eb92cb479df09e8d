// The template's own Parse contract, driven through the official Parse JS
// SDK (npm `parse`) as the template's app sends it: started by
// tests/tests/parse_template.rs, which passes two running nodes' API URLs in
// TINCAN_A_URL and TINCAN_B_URL (node B is bootstrapped from node A and gets
// node A's records by gossip and sync).
//
// Checks, on node A and again on node B:
// - `_User.role`: sign-up with it; changed by its own user; refused (119)
//   to another user.
// - `Room` with `owner` (self: created; another user: refused 119),
//   `members` and `settings`; its ACL (public read, owner write) read back;
//   a client ACL that grants more than the rules (public write) refused.
// - `Channel` with `permissions` and `description`.
// - `RoomLog` with `user` (self: created; another user: refused 119) and a
//   Date `timestamp` (returned as a Date; one outside the clock-skew rule
//   refused 142), pushed by LiveQuery to a subscriber connected at
//   `ws://host:port` and to one at `ws://host:port/parse`.
// - The log rule: a log entry in an open room joins its author; an
//   invite-only room stays closed (119 on node A, which holds the room; not
//   writable on node B either).
'use strict';

const assert = require('node:assert/strict');
const Parse = require('parse/node');

const A = process.env.TINCAN_A_URL;
const B = process.env.TINCAN_B_URL;
if (!A || !B) {
  console.error('set TINCAN_A_URL and TINCAN_B_URL (tests/tests/parse_template.rs does)');
  process.exit(2);
}
const APP = 'tincan-template-test';
/// The node's clock-skew rule (tincan_core::rules::MAX_CLOCK_SKEW).
const SKEW_MS = 10 * 60 * 1000;

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

async function eventually(what, ms, f) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/// Expects `promise` to fail with `code` and a message matching `message`.
async function refused(what, promise, code, message) {
  await assert.rejects(promise, (e) => {
    assert.equal(e.code, code, `${what}: expected ${code}, got ${e.code}: ${e.message}`);
    if (message) assert.match(e.message, message, `${what}: ${e.message}`);
    return true;
  });
  console.log(`refused as it must: ${what}`);
}

/// A LiveQuery subscriber at `url` for `query`; `next()` waits for a create.
async function subscriber(url, token, query) {
  const client = new Parse.LiveQueryClient({ applicationId: APP, serverURL: url, sessionToken: token });
  client.on('error', (e) => console.error(`LiveQuery client error at ${url}:`, e));
  client.open();
  const sub = await client.subscribe(query, token);
  await withTimeout(new Promise((r) => sub.on('open', r)), 10000, `LiveQuery subscription at ${url}`);
  const events = [];
  let waiter = null;
  sub.on('create', (obj) => {
    events.push(obj);
    if (waiter) waiter();
  });
  const next = (ms) =>
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
      `LiveQuery create at ${url}`,
    );
  return { client, next };
}

function assertOwnerAcl(obj, owner, what) {
  const acl = obj.getACL();
  assert.ok(acl, `${what}: no ACL returned`);
  assert.equal(acl.getPublicReadAccess(), true, `${what}: public read`);
  assert.equal(acl.getPublicWriteAccess(), false, `${what}: public write`);
  assert.equal(acl.getWriteAccess(owner.id), true, `${what}: owner write`);
}

function assertDateNear(d, what) {
  assert.ok(d instanceof Date, `${what}: timestamp is ${typeof d} ${JSON.stringify(d)}, not a Date`);
  assert.ok(Math.abs(d.getTime() - Date.now()) < SKEW_MS, `${what}: timestamp ${d.toISOString()} is not now`);
}

async function main() {
  Parse.initialize(APP);
  const Room = Parse.Object.extend('Room');
  const Channel = Parse.Object.extend('Channel');
  const RoomLog = Parse.Object.extend('RoomLog');
  const wsA = A.replace(/^http/, 'ws');

  // Alice signs up on node A with a role, and changes it.
  on(A);
  const alice = new Parse.User();
  alice.set('username', 'alice');
  alice.set('password', 'alice-pw');
  alice.set('email', 'alice@example.com');
  alice.set('role', 'moderator');
  await alice.signUp();
  const asAlice = { sessionToken: alice.getSessionToken() };
  assert.equal((await Parse.User.me(asAlice.sessionToken)).get('role'), 'moderator');
  alice.set('role', 'participant');
  await alice.save(null, asAlice);
  const aliceRead = await new Parse.Query(Parse.User).get(alice.id, asAlice);
  assert.equal(aliceRead.get('role'), 'participant');
  assert.equal((await Parse.User.logIn('alice', 'alice-pw')).get('role'), 'participant');
  const badRole = new Parse.User();
  badRole.set('username', 'nobody');
  badRole.set('password', 'pw');
  badRole.set('role', 42);
  await refused('sign-up with a role that is not a string', badRole.signUp(), Parse.Error.INCORRECT_TYPE);

  // Carol, another user on node A.
  const carol = new Parse.User();
  carol.set('username', 'carol');
  carol.set('password', 'carol-pw');
  carol.set('role', 'participant');
  await carol.signUp();
  const asCarol = { sessionToken: carol.getSessionToken() };
  const aliceAsCarol = Parse.User.createWithoutData(alice.id);
  aliceAsCarol.set('role', 'admin');
  await refused("carol changing alice's role", aliceAsCarol.save(null, asCarol), Parse.Error.OPERATION_FORBIDDEN, /own account/);
  assert.equal((await new Parse.Query(Parse.User).get(alice.id, asAlice)).get('role'), 'participant');

  // A room as the template makes it: owner, members, settings, ACL.
  const acl = new Parse.ACL(alice);
  acl.setPublicReadAccess(true);
  const room = new Room({
    title: 'Template room',
    owner: alice,
    members: [alice],
    settings: { inviteOnly: false, memberLimit: 10 },
  });
  room.setACL(acl);
  await room.save(null, asAlice);
  const roomRead = await new Parse.Query(Room).get(room.id, asAlice);
  assert.equal(roomRead.get('owner').id, alice.id);
  assert.deepEqual(roomRead.get('members').map((m) => m.id), [alice.id]);
  assert.deepEqual(roomRead.get('settings'), { inviteOnly: false, memberLimit: 10 });
  assertOwnerAcl(roomRead, alice, 'Room on node A');

  const stolen = new Room({ title: 'Not mine', owner: alice });
  await refused('carol creating a room owned by alice', stolen.save(null, asCarol), Parse.Error.OPERATION_FORBIDDEN, /owner/);
  const open = new Parse.ACL(alice);
  open.setPublicReadAccess(true);
  open.setPublicWriteAccess(true);
  const tooOpen = new Room({ title: 'Anyone may edit', owner: alice });
  tooOpen.setACL(open);
  await refused('a Room ACL granting public write', tooOpen.save(null, asAlice), Parse.Error.OPERATION_FORBIDDEN, /ACL/);
  const ownerAsCarol = Room.createWithoutData(room.id);
  ownerAsCarol.set('owner', carol);
  await refused("carol taking over alice's room", ownerAsCarol.save(null, asCarol), Parse.Error.OPERATION_FORBIDDEN, /owner/);

  // A channel with permissions and a description.
  const voice = new Channel({
    name: 'voice',
    description: 'the main channel',
    permissions: ['speak:members', 'listen:everyone'],
    room,
  });
  voice.setACL(acl);
  await voice.save(null, asAlice);
  const voiceRead = await new Parse.Query(Channel).equalTo('room', room).first(asAlice);
  assert.equal(voiceRead.get('description'), 'the main channel');
  assert.deepEqual(voiceRead.get('permissions'), ['speak:members', 'listen:everyone']);
  assertOwnerAcl(voiceRead, alice, 'Channel on node A');

  // LiveQuery subscribers on node A: one at ws://host:port, one at /parse.
  const roomLogs = new Parse.Query(RoomLog).equalTo('room', room);
  const atRoot = await subscriber(wsA, asAlice.sessionToken, roomLogs);
  const atParse = await subscriber(`${wsA}/parse`, asAlice.sessionToken, roomLogs);

  // RoomLog with user and a Date timestamp.
  const entry = new RoomLog({ room, user: alice, action: 'joined', timestamp: new Date() });
  await entry.save(null, asAlice);
  for (const [where, s] of [['ws://host:port', atRoot], ['ws://host:port/parse', atParse]]) {
    const pushed = await s.next(10000);
    assert.equal(pushed.id, entry.id, `LiveQuery at ${where}`);
    assert.equal(pushed.get('user').id, alice.id);
    assertDateNear(pushed.get('timestamp'), `LiveQuery at ${where}`);
  }
  const entryRead = await new Parse.Query(RoomLog).get(entry.id, asAlice);
  assert.equal(entryRead.get('user').id, alice.id);
  assert.equal(entryRead.get('action'), 'joined');
  assertDateNear(entryRead.get('timestamp'), 'RoomLog read on node A');
  await refused(
    'a RoomLog whose user is someone else',
    new RoomLog({ room, user: alice, action: 'forged', timestamp: new Date() }).save(null, asCarol),
    Parse.Error.OPERATION_FORBIDDEN,
    /yourself/,
  );
  await refused(
    'a RoomLog dated a day ago',
    new RoomLog({ room, user: alice, action: 'late', timestamp: new Date(Date.now() - 86400000) }).save(null, asAlice),
    Parse.Error.VALIDATION_ERROR,
    /timestamp/,
  );

  // The log rule: carol logs in alice's open room without joining first,
  // and so joins it.
  const carolEntry = new RoomLog({ room, user: carol, action: 'carol says hi', timestamp: new Date() });
  await carolEntry.save(null, asCarol);
  assert.equal((await atRoot.next(10000)).id, carolEntry.id);
  assert.equal((await atParse.next(10000)).id, carolEntry.id);
  const withCarol = await new Parse.Query(Room).get(room.id, asAlice);
  assert.deepEqual(withCarol.get('members').map((m) => m.id).sort(), [alice.id, carol.id].sort());
  // An invite-only room stays closed.
  const closed = new Room({ title: 'Invite only', owner: alice, settings: { inviteOnly: true } });
  await closed.save(null, asAlice);
  await refused(
    'a log entry by a non-member in an invite-only room',
    new RoomLog({ room: closed, user: carol, action: 'let me in', timestamp: new Date() }).save(null, asCarol),
    Parse.Error.OPERATION_FORBIDDEN,
    /invite-only/,
  );
  const closedRead = await new Parse.Query(Room).get(closed.id, asAlice);
  assert.deepEqual(closedRead.get('members').map((m) => m.id), [alice.id]);

  // Node B: bob signs up with a role; everything above arrived by gossip.
  on(B);
  const bob = new Parse.User();
  bob.set('username', 'bob');
  bob.set('password', 'bob-pw');
  bob.set('role', 'participant');
  await bob.signUp();
  const asBob = { sessionToken: bob.getSessionToken() };
  bob.set('role', 'moderator');
  await bob.save(null, asBob);
  assert.equal((await Parse.User.me(asBob.sessionToken)).get('role'), 'moderator');

  // Bob logs in alice's open room from node B: node B fetches the room, the
  // entry joins bob, and alice's subscribers on node A get it by gossip.
  const roomOnB = Room.createWithoutData(room.id);
  const bobEntry = new RoomLog({ room: roomOnB, user: bob, action: 'bob from node B', timestamp: new Date() });
  await bobEntry.save(null, asBob);
  for (const [where, s] of [['ws://host:port', atRoot], ['ws://host:port/parse', atParse]]) {
    const pushed = await s.next(20000);
    assert.equal(pushed.id, bobEntry.id, `LiveQuery at ${where} of an entry written on node B`);
    assert.equal(pushed.get('user').id, bob.id);
    assertDateNear(pushed.get('timestamp'), `LiveQuery at ${where} of an entry from node B`);
  }
  // (Not read back from node B's profiles: whether alice's profile is
  // there yet depends on the store's standing rule, not on this API.)
  const aliceOnB = Parse.User.createWithoutData(alice.id);
  aliceOnB.set('role', 'admin');
  await refused("bob changing alice's role on node B", aliceOnB.save(null, asBob), Parse.Error.OPERATION_FORBIDDEN, /own account/);
  await refused(
    'a RoomLog on node B whose user is alice',
    new RoomLog({ room: roomOnB, user: alice, action: 'forged on B', timestamp: new Date() }).save(null, asBob),
    Parse.Error.OPERATION_FORBIDDEN,
    /yourself/,
  );
  await refused(
    'bob creating a room owned by alice on node B',
    new Room({ title: 'Not mine either', owner: alice }).save(null, asBob),
    Parse.Error.OPERATION_FORBIDDEN,
    /owner/,
  );

  // What node B shows of alice's room, channel and log.
  const roomB = await eventually('the room with its channel and entries on node B', 20000, async () => {
    const r = await new Parse.Query(Room).get(room.id, asBob);
    const logs = await new Parse.Query(RoomLog).equalTo('room', roomOnB).ascending('createdAt').find(asBob);
    const chans = await new Parse.Query(Channel).equalTo('room', roomOnB).find(asBob);
    return logs.length === 3 && chans.length === 1 ? { r, logs, chans } : null;
  });
  assert.equal(roomB.r.get('owner').id, alice.id);
  assert.deepEqual(roomB.r.get('settings'), { inviteOnly: false, memberLimit: 10 });
  assert.deepEqual(roomB.r.get('members').map((m) => m.id).sort(), [alice.id, bob.id, carol.id].sort());
  assertOwnerAcl(roomB.r, alice, 'Room on node B');
  assert.deepEqual(roomB.chans[0].get('permissions'), ['speak:members', 'listen:everyone']);
  assert.equal(roomB.chans[0].get('description'), 'the main channel');
  assertOwnerAcl(roomB.chans[0], alice, 'Channel on node B');
  assert.deepEqual(roomB.logs.map((l) => l.get('action')), ['joined', 'carol says hi', 'bob from node B']);
  assert.deepEqual(roomB.logs.map((l) => l.get('user').id), [alice.id, carol.id, bob.id]);
  for (const l of roomB.logs) assertDateNear(l.get('timestamp'), 'RoomLog read on node B');
  assert.equal(roomB.logs[0].getACL().getPublicReadAccess(), true);
  assert.equal(roomB.logs[0].getACL().getWriteAccess(alice.id), false, 'log entries are never edited');

  // Alice's invite-only room stays closed to bob on node B.
  await assert.rejects(
    new RoomLog({ room: Room.createWithoutData(closed.id), user: bob, action: 'let me in too', timestamp: new Date() }).save(null, asBob),
    (e) => {
      assert.ok([Parse.Error.OPERATION_FORBIDDEN, Parse.Error.OBJECT_NOT_FOUND].includes(e.code), `got ${e.code}: ${e.message}`);
      return true;
    },
  );
  console.log('refused as it must: a log entry by a non-member in an invite-only room on node B');

  atRoot.client.close();
  atParse.client.close();
  console.log('parse template: all checks passed');
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error('FAILED:', e && e.stack ? e.stack : e);
    process.exit(1);
  },
);
