// OHIF v3 (bundled with MONAI Label, served at /ohif/) in headless Chromium, driven like a user:
// open the study, connect the MONAI Label panel, pick the SAM-Med3D model and a segment in
// "Point Prompts", place an include click on the target voxel, press Run, and check that the
// segmentation appears (labelmap voxels + pixels on screen). Then save the viewer's labelmap as
// the final label (see SAVE below) so the server stores it in the PACS as DICOM SEG.
//
// Configured by environment (tests/e2e/ohif_orthanc.sh sets them):
//   SERVER_URL      MONAI Label server, e.g. http://127.0.0.1:8123
//   STUDY_UID       StudyInstanceUID to open; SERIES_UID: its image series
//   TARGET_IJK      "i,j,k": voxel (column, row, slice) inside the target structure
//   SEGMENT         segment name to click for (one of the names /info advertises)
//   MODEL           model name (default sammed3d)
//   ARTIFACTS       folder for screenshots and result.json
//   USER_DATA_DIR   a fresh Chromium profile folder
//   CHROMIUM        executable (default /usr/bin/chromium)
//   REQUIRE_TARGET  1: the clicked voxel must be inside the mask (set when real weights are served)
//
// SAVE: the MONAI Label panel of this OHIF build has no save button (its client's save_label() is
// never called) and the monai-label mode has no segmentation panel with "Export DICOM SEG". The
// test therefore sends the viewer's own labelmap exactly as that client's save_label() would:
// PUT /datastore/label?image=<SeriesInstanceUID>&tag=final with params + label.bin (uint8, the
// volume's voxel order). The server converts it (binary_to_image) and, because the datastore is
// DICOMweb, writes a DICOM SEG with dcmqi and stores it in the PACS (STOW-RS).
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') throw new Error(`environment variable ${name} is required`);
  return v;
};
const SERVER = env('SERVER_URL').replace(/\/+$/, '');
const STUDY = env('STUDY_UID');
const SERIES = env('SERIES_UID');
const TARGET = env('TARGET_IJK').split(',').map(Number);
const SEGMENT = env('SEGMENT');
const MODEL = env('MODEL', 'sammed3d');
const ARTIFACTS = env('ARTIFACTS');
const USER_DATA_DIR = env('USER_DATA_DIR');
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
const REQUIRE_TARGET = process.env.REQUIRE_TARGET === '1'; // trained weights: the click's voxel must be in the mask
const VIEWPORT_ID = 'mpr-axial';

const t0 = Date.now();
const log = (msg) => console.log(`[ohif ${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
const result = { server: SERVER, study: STUDY, series: SERIES, target: TARGET, segment: SEGMENT, steps: [] };

async function step(name, fn) {
  log(name + ' ...');
  const s = Date.now();
  const value = await fn();
  result.steps.push({ name, seconds: (Date.now() - s) / 1000 });
  return value;
}

// Poll a page function until it returns a truthy value; its last value is in the error message.
async function until(page, what, fn, arg, timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await page.evaluate(fn, arg);
      if (last && (typeof last !== 'object' || last.ok)) return last;
    } catch (e) {
      last = String(e).slice(0, 300);
    }
    await page.waitForTimeout(250);
  }
  throw new Error(`timed out waiting for ${what}; last state: ${JSON.stringify(last)}`);
}

async function main() {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const context = await chromium.launchPersistentContext(USER_DATA_DIR, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1600, height: 1000 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  const page = context.pages()[0] || (await context.newPage());
  const consoleErrors = [];
  page.on('pageerror', (e) => consoleErrors.push('pageerror: ' + e.message.slice(0, 300)));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/ERR_NAME_NOT_RESOLVED|fonts\.googleapis/.test(m.text())) consoleErrors.push(m.text().slice(0, 300));
  });
  // the study's images must come from the PACS through the server's DICOMweb proxy
  let proxied = 0;
  page.on('response', (r) => {
    if (r.url().startsWith(SERVER + '/proxy/dicom/') && r.status() === 200) proxied++;
    if (r.status() >= 400) consoleErrors.push(`HTTP ${r.status()} ${r.request().method()} ${r.url().slice(0, 200)}`);
  });

  try {
    await step('open the viewer at /ohif/ with the study', async () => {
      await page.goto(`${SERVER}/ohif/monai-label?StudyInstanceUIDs=${STUDY}`, { waitUntil: 'load', timeout: 60000 });
      const confirm = page.getByText('Confirm and Hide');
      await confirm.click({ timeout: 20000 }).catch(() => log('(no investigational-use banner)'));
    });

    const loaded = await step('wait until the series volume is loaded from Orthanc via /proxy/dicom', () =>
      until(page, 'the image volume', ({ vpId }) => {
        const s = window.services;
        if (!s || !s.cornerstoneViewportService) return { ok: false, why: 'no OHIF services yet' };
        const vp = s.cornerstoneViewportService.getCornerstoneViewport(vpId);
        if (!vp) return { ok: false, why: `no viewport ${vpId}` };
        const info = s.cornerstoneViewportService.getViewportInfo(vpId);
        const vol = info && info.viewportData && info.viewportData.data[0] && info.viewportData.data[0].volume;
        if (!vol || !vol.imageData) return { ok: false, why: 'no volume on the viewport' };
        const st = vol.loadStatus || {};
        if (!st.loaded) return { ok: false, why: 'volume loading', cached: st.cachedFrames && st.cachedFrames.length };
        return { ok: true, dimensions: vol.dimensions, spacing: vol.spacing, direction: Array.from(vol.direction) };
      }, { vpId: VIEWPORT_ID }, 120000));
    result.volume = loaded;
    log(`volume ${JSON.stringify(loaded.dimensions)} spacing ${JSON.stringify(loaded.spacing)}; ${proxied} proxied DICOMweb responses`);
    if (proxied === 0) throw new Error('no DICOMweb response came through the server proxy /proxy/dicom/');

    await step('connect the MONAI Label panel to the server', async () => {
      const input = page.locator('#monailabelServerURL');
      await input.fill(SERVER + '/');
      await input.blur();
      await input.locator('xpath=ancestor::tr[1]').locator('button').click();
      await page.getByText('Point Prompts', { exact: true }).waitFor({ timeout: 30000 });
    });

    await step(`select model ${MODEL} and segment "${SEGMENT}" in Point Prompts`, async () => {
      await page.getByText('Point Prompts', { exact: true }).click();
      const tab = page.locator('.tab').filter({ has: page.getByText('Point Prompts', { exact: true }) });
      const select = tab.locator('select.selectBox');
      const models = await select.locator('option').allTextContents();
      if (!models.map((m) => m.trim()).includes(MODEL)) throw new Error(`model ${MODEL} not offered; models: ${models}`);
      await select.selectOption(MODEL);
      const rows = tab.locator('tr.clickable-row');
      const names = (await rows.allTextContents()).map((t) => t.trim());
      result.segments_offered = names;
      if (!names.includes(SEGMENT)) {
        throw new Error(`segment "${SEGMENT}" is not offered by the Point Prompts tab (offered: ${JSON.stringify(names)}). ` +
          'The tab lists the labels of /info; a model advertising no labels leaves only "background".');
      }
      await rows.filter({ hasText: new RegExp(`^\\s*${SEGMENT}\\s*$`) }).first().click();
    });

    const before = path.join(ARTIFACTS, 'ohif_click.png');
    const click = await step(`scroll to slice ${TARGET[2]} and click the target voxel ${JSON.stringify(TARGET)}`, async () => {
      const where = await page.evaluate(({ vpId, ijk }) => {
        const s = window.services;
        const vp = s.cornerstoneViewportService.getCornerstoneViewport(vpId);
        const vol = s.cornerstoneViewportService.getViewportInfo(vpId).viewportData.data[0].volume;
        const world = vol.imageData.indexToWorld(ijk);
        // scroll: move the camera along the view-plane normal onto the target's plane
        const cam = vp.getCamera();
        const n = cam.viewPlaneNormal;
        const d = (world[0] - cam.focalPoint[0]) * n[0] + (world[1] - cam.focalPoint[1]) * n[1] + (world[2] - cam.focalPoint[2]) * n[2];
        vp.setCamera({
          focalPoint: cam.focalPoint.map((v, a) => v + d * n[a]),
          position: cam.position.map((v, a) => v + d * n[a]),
        });
        vp.render();
        const canvas = vp.worldToCanvas(world);
        const rect = vp.element.getBoundingClientRect();
        return { world: Array.from(world), x: rect.left + canvas[0], y: rect.top + canvas[1], rect: [rect.left, rect.top, rect.width, rect.height] };
      }, { vpId: VIEWPORT_ID, ijk: TARGET });
      await page.waitForTimeout(500);
      await page.mouse.move(where.x, where.y);
      await page.mouse.down();
      await page.mouse.up();
      const placed = await until(page, 'the include point annotation', ({ vpId }) => {
        const all = window.cornerstoneTools.annotation.state.getAllAnnotations().filter((a) => a.metadata.toolName === 'ProbeMONAILabel');
        if (!all.length) return { ok: false, why: 'no ProbeMONAILabel annotation' };
        const vol = window.services.cornerstoneViewportService.getViewportInfo(vpId).viewportData.data[0].volume;
        const p = all[all.length - 1].data.handles.points[0];
        return { ok: true, count: all.length, index: vol.imageData.worldToIndex(p).map(Math.round) };
      }, { vpId: VIEWPORT_ID }, 10000);
      await page.screenshot({ path: before });
      return { ...where, placed };
    });
    result.click = click;
    const off = click.placed.index.map((v, a) => Math.abs(v - TARGET[a]));
    log(`point placed at voxel ${JSON.stringify(click.placed.index)} (target ${JSON.stringify(TARGET)})`);
    if (Math.max(...off) > 1) throw new Error(`the click landed at voxel ${click.placed.index}, not at the target ${TARGET}`);

    const infer = await step('press Run: the viewer sends the click to the server', async () => {
      const tab = page.locator('.tab').filter({ has: page.getByText('Point Prompts', { exact: true }) });
      const [request, response] = await Promise.all([
        page.waitForRequest((r) => r.url().includes(`/infer/${MODEL}`) && r.method() === 'POST', { timeout: 30000 }),
        page.waitForResponse((r) => r.url().includes(`/infer/${MODEL}`), { timeout: 300000 }),
        tab.locator('button', { hasText: 'Run' }).click(),
      ]);
      const body = request.postData() || '';
      const m = body.match(/name="params"\r?\n\r?\n([^\r\n]*)/);
      const params = m ? JSON.parse(m[1]) : null;
      return { url: request.url(), params, status: response.status() };
    });
    result.infer = infer;
    log(`infer ${infer.status}: ${infer.url.replace(SERVER, '')} params ${JSON.stringify(infer.params)}`);
    if (infer.status !== 200) throw new Error(`infer answered HTTP ${infer.status}`);
    if (!infer.params) throw new Error('could not read the params of the infer request');
    // This OHIF build sends no `label` for deepgrow models: the server sees the default segment name.
    result.infer_label_sent = infer.params.label ?? null;
    const fg = infer.params.foreground || [];
    if (fg.length !== 1 || fg[0].some((v, a) => Math.abs(v - TARGET[a]) > 1)) {
      throw new Error(`infer request foreground ${JSON.stringify(fg)} is not the target ${JSON.stringify(TARGET)}`);
    }
    if (!infer.url.includes(`image=${SERIES}`)) throw new Error(`infer asked for another image: ${infer.url}`);

    const seg = await step('wait for the segmentation to appear in the viewer', () =>
      until(page, 'a non-empty labelmap', ({ ijk }) => {
        const vol = window.services.segmentationService.getLabelmapVolume('1');
        if (!vol) return { ok: false, why: 'no labelmap volume' };
        const data = vol.voxelManager.getCompleteScalarDataArray();
        let n = 0;
        let indexSum = 0; // sum of the flat indices (i + j*X + k*X*Y) of labelled voxels: a fingerprint
        const values = new Set();
        for (let i = 0; i < data.length; i++) if (data[i]) { n++; indexSum += i; values.add(data[i]); }
        const [X, Y] = vol.dimensions;
        const atTarget = data[ijk[0] + ijk[1] * X + ijk[2] * X * Y];
        return { ok: n > 0, voxels: n, index_sum: indexSum, values: Array.from(values), atTarget, dimensions: vol.dimensions, length: data.length };
      }, { ijk: TARGET }, 120000));
    result.segmentation = seg;
    log(`labelmap: ${seg.voxels} voxels, values ${JSON.stringify(seg.values)}, value at target ${seg.atTarget}`);
    if (REQUIRE_TARGET && !seg.atTarget) throw new Error('the segmentation does not contain the clicked voxel');

    await page.waitForTimeout(1500); // let the overlay render
    const after = path.join(ARTIFACTS, 'ohif_segmentation.png');
    await page.screenshot({ path: after });
    // the overlay must change the viewport's pixels: compare the two screenshots inside the page
    const r = click.rect;
    const changed = await page.evaluate(async ({ a, b, rect }) => {
      const load = (src) => new Promise((res, rej) => { const im = new Image(); im.onload = () => res(im); im.onerror = rej; im.src = src; });
      const [ia, ib] = await Promise.all([load(a), load(b)]);
      const px = (im) => {
        const c = document.createElement('canvas');
        c.width = rect[2]; c.height = rect[3];
        const g = c.getContext('2d');
        g.drawImage(im, rect[0], rect[1], rect[2], rect[3], 0, 0, rect[2], rect[3]);
        return g.getImageData(0, 0, rect[2], rect[3]).data;
      };
      const da = px(ia), db = px(ib);
      let n = 0;
      for (let i = 0; i < da.length; i += 4) {
        if (Math.abs(da[i] - db[i]) + Math.abs(da[i + 1] - db[i + 1]) + Math.abs(da[i + 2] - db[i + 2]) > 30) n++;
      }
      return n;
    }, { a: 'data:image/png;base64,' + fs.readFileSync(before).toString('base64'),
      b: 'data:image/png;base64,' + fs.readFileSync(after).toString('base64'), rect: r.map(Math.round) });
    result.changed_pixels = changed;
    log(`axial viewport: ${changed} pixels changed by the overlay; screenshot ${after}`);
    if (changed < 20) throw new Error(`the segmentation is in the labelmap but the axial viewport shows no overlay (${changed} pixels changed)`);

    const saved = await step('save the viewer\'s labelmap as the final label (server -> DICOM SEG -> PACS)', () =>
      page.evaluate(async ({ server, series, segment }) => {
        const vol = window.services.segmentationService.getLabelmapVolume('1');
        const data = new Uint8Array(vol.voxelManager.getCompleteScalarDataArray());
        const values = Array.from(new Set(data.filter((v) => v > 0))).sort((a, b) => a - b);
        const segs = window.services.segmentationService.getSegmentation('1');
        const name = (v) => {
          const s = segs && segs.segments && segs.segments[v];
          return (s && s.label) || segment;
        };
        const params = { label_info: values.map((v) => ({ name: name(v), idx: v })) };
        const form = new FormData();
        form.append('params', JSON.stringify(params));
        form.append('label', new Blob([data]), 'label.bin');
        const r = await fetch(`${server}/datastore/label?image=${encodeURIComponent(series)}&tag=final`, { method: 'PUT', body: form });
        return { status: r.status, body: (await r.text()).slice(0, 500), params };
      }, { server: SERVER, series: SERIES, segment: SEGMENT }));
    result.save = saved;
    log(`save: HTTP ${saved.status} ${saved.body}`);
    if (saved.status !== 200) throw new Error(`saving the label failed: HTTP ${saved.status} ${saved.body}`);

    result.console_errors = consoleErrors;
    result.ok = true;
  } catch (e) {
    result.ok = false;
    result.error = String(e && e.stack ? e.stack : e);
    result.console_errors = consoleErrors;
    await page.screenshot({ path: path.join(ARTIFACTS, 'ohif_failure.png') }).catch(() => {});
  } finally {
    fs.writeFileSync(path.join(ARTIFACTS, 'ohif_result.json'), JSON.stringify(result, null, 1));
    await context.close();
  }
  if (!result.ok) {
    console.error(`[ohif] FAILED: ${result.error}`);
    if (consoleErrors.length) console.error('[ohif] browser console errors:\n  ' + consoleErrors.slice(-10).join('\n  '));
    process.exit(1);
  }
  log('OK');
}

main().catch((e) => { console.error(e); process.exit(1); });
