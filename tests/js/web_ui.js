// Drives the web control panel of two running tincan nodes in Debian's
// chromium, headless, through playwright-core (started by
// tests/tests/web_ui.rs, which says what it checks). Env: TINCAN_A_URL,
// TINCAN_B_URL (the nodes' API URLs), SCREENSHOT_DIR, CHROMIUM.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const A = process.env.TINCAN_A_URL;
const B = process.env.TINCAN_B_URL;
const SHOTS = process.env.SCREENSHOT_DIR;
const T0 = Date.now();
const step = (what) => console.log(`web ui: ${((Date.now() - T0) / 1000).toFixed(1)} s ${what}`);

async function signUp(page, url, username) {
  await page.goto(url);
  await page.locator('#auth-username').fill(username);
  await page.locator('#auth-password').fill(`pw-${username}-secret`);
  await page.getByRole('button', { name: 'Sign up' }).click();
  await page.locator('#me-name').waitFor();
  return page.locator('#me-name').getAttribute('data-user');
}

async function main() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'tincan-chromium-'));
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--disk-cache-dir=${profile}/cache`,
    ],
  });
  try {
    const viewport = { width: 1280, height: 720 };
    const a = await (await browser.newContext({ viewport })).newPage();
    const b = await (await browser.newContext({ viewport })).newPage();
    for (const [name, p] of [['A', a], ['B', b]]) {
      p.on('pageerror', (e) => console.log(`page ${name} error: ${e.message}`));
      p.on('console', (m) => { if (m.type() === 'error') console.log(`page ${name} console: ${m.text()}`); });
    }
    const expect = async (locator, what, timeout = 15000) => {
      try { await locator.waitFor({ timeout }); } catch (e) { throw new Error(`${what}: not shown within ${timeout} ms (${e.message.split('\n')[0]})`); }
    };

    // A: sign up, a room, a channel, voice.
    const alice = await signUp(a, A, 'alice');
    step(`A signed up alice ${alice}`);
    await a.getByLabel('New room').fill('LAN party');
    await a.locator('#create-room-form').getByRole('button', { name: 'Create' }).click();
    await expect(a.locator('#room-title', { hasText: 'LAN party' }), 'A: the new room');
    const roomId = (await a.locator('#room-id').textContent()).trim();
    await a.getByLabel('New channel').fill('General');
    await a.locator('#create-channel-form').getByRole('button', { name: 'Create' }).click();
    await expect(a.locator('#channel-list .channel-name', { hasText: 'General' }), 'A: the new channel');
    step(`A made room ${roomId} and channel General`);
    await a.getByRole('button', { name: 'Join voice in General' }).click();
    await expect(a.locator('#voice-where', { hasText: 'In voice: General' }), 'A: in voice');
    step('A joined voice');

    // B: sign up, join the room by its id; the room and channel appear live.
    const bob = await signUp(b, B, 'bob');
    step(`B signed up bob ${bob}`);
    await b.getByLabel('Join by id').fill(roomId);
    await b.locator('#join-room-form').getByRole('button', { name: 'Join' }).click();
    await expect(b.locator('#room-title', { hasText: 'LAN party' }), 'B: the joined room');
    await expect(b.locator('#channel-list .channel-name', { hasText: 'General' }), 'B: the channel');
    await expect(b.locator('#room-owner', { hasText: 'alice' }), 'B: the owner by name');
    step('B joined the room and shows it with its channel');

    // A new channel on A shows on B with no reload (LiveQuery over gossip),
    // and B's membership shows on A.
    await a.getByLabel('New channel').fill('Raid');
    await a.locator('#create-channel-form').getByRole('button', { name: 'Create' }).click();
    await expect(b.locator('#channel-list .channel-name', { hasText: 'Raid' }), 'B: a channel A made after B joined');
    await expect(a.locator('#members .member', { hasText: 'bob' }), 'A: bob among the members');
    await expect(b.locator('#log-list li', { hasText: 'created channel Raid' }), 'B: the activity log entry from A');
    step('B shows the channel A made, live; A shows bob as a member');

    // Before joining, B sees who is in each voice channel (presence gossip).
    await expect(b.locator('#channel-list li', { hasText: 'General' }).locator('.in-voice .member', { hasText: 'alice' }),
      'B: alice shown in General before B joins it', 15000);
    step('B shows alice in the General voice channel before joining it');

    // B joins voice and sees alice speaking (A's WAV input plays speech).
    await b.getByRole('button', { name: 'Join voice in General' }).click();
    await expect(b.locator('#voice-where', { hasText: 'In voice: General' }), 'B: in voice');
    await expect(b.locator('#channel-list li', { hasText: 'General' }).getByRole('button', { name: 'Leave voice' }), 'B: General marked as joined');
    await expect(b.locator(`#participants li[data-user="${alice}"]`), 'B: alice in the voice channel', 20000);
    await expect(b.locator(`#participants li[data-user="${alice}"][data-speaking="true"]`), 'B: alice speaking', 20000);
    step('B shows alice speaking');
    await expect(b.locator('#links tbody td', { hasText: / ms$/ }).first(), 'B: a voice link with its RTT', 10000);

    // Push-to-talk by its key and mute by its button reach B's node.
    const voiceStatus = (p) => p.evaluate(() => fetch('/v1/voice/status', {
      headers: { 'X-Parse-Session-Token': sessionStorage.getItem('tincan.session') },
    }).then((r) => r.json()));
    const until = async (what, f) => {
      for (let i = 0; i < 50; i++) { if (await f()) return; await new Promise((r) => setTimeout(r, 100)); }
      throw new Error(`${what}: not within 5 s`);
    };
    await b.locator('body').focus();
    await b.keyboard.down('Backquote');
    await until('B: push-to-talk down by key', async () => (await voiceStatus(b)).push_to_talk === true);
    await b.keyboard.up('Backquote');
    await until('B: push-to-talk up by key', async () => (await voiceStatus(b)).push_to_talk === false);
    await b.getByRole('button', { name: 'Mute' }).click();
    await until('B: muted by the button', async () => (await voiceStatus(b)).muted === true);
    await expect(b.locator('#mute-button[aria-pressed="true"]', { hasText: 'Unmute' }), 'B: the mute button pressed');
    await b.getByRole('button', { name: 'Unmute' }).click();
    await until('B: unmuted by the button', async () => (await voiceStatus(b)).muted === false);
    step('B: push-to-talk by key, mute and unmute by button reach the node');

    fs.mkdirSync(SHOTS, { recursive: true });
    // B's shot is taken while alice speaks (her indicator lit).
    await b.locator(`#participants li[data-user="${alice}"][data-speaking="true"]`).waitFor({ timeout: 10000 });
    await b.screenshot({ path: path.join(SHOTS, 'node-b.png') });
    await a.screenshot({ path: path.join(SHOTS, 'node-a.png') });
    await b.setViewportSize({ width: 390, height: 844 });
    await b.screenshot({ path: path.join(SHOTS, 'node-b-phone.png'), fullPage: true });
    step(`screenshots in ${SHOTS}`);

    // Profile: a new username shows at once on A, and on B by gossip (after
    // B's page asks for the name again: a reload, which also shows the
    // session survives one).
    await a.locator('#profile-username').fill('alice-renamed');
    await a.getByRole('button', { name: 'Save profile' }).click();
    await expect(a.locator('#me-name', { hasText: 'alice-renamed' }), 'A: the new username');
    await b.reload();
    await expect(b.locator('#room-owner', { hasText: 'alice-renamed' }), 'B: the owner renamed, after a reload', 10000);
    step('A renamed alice; B shows the new name');

    // A node that cannot be reached gets a clear banner (the page polls it).
    await a.context().setOffline(true);
    await expect(a.locator('#banner', { hasText: 'not reachable' }), 'A: the unreachable banner', 10000);
    await a.context().setOffline(false);
    await a.locator('#banner').waitFor({ state: 'hidden', timeout: 10000 });
    step('A showed the unreachable banner, and took it away');
    console.log('web ui: all checks passed');
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => { console.error(`web ui: FAILED: ${e.stack || e}`); process.exit(1); });
