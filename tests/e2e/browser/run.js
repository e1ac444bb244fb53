// Browser checks of the web explorer and the HTML report with Playwright driving Debian's
// chromium headless. Usage: node run.js <explorer URL> <report index.html> <screenshot folder>
// [<explorer URL of a segmentation model> <of a vision transformer> <its report> <of a million-point
// map> <its report>]
// Exits 1 with a message on the first failed check.
'use strict';

const path = require('path');
const fs = require('fs');
const { chromium } = require('playwright-core');
const { millionMap, millionReport } = require('./million');

const [url, reportPath, outDir, segUrl, vitUrl, vitReportPath, millionUrl, millionReportPath] = process.argv.slice(2);
if (!url || !reportPath || !outDir) {
    console.error('usage: node run.js <explorer URL> <report index.html> <screenshot folder>');
    process.exit(2);
}
fs.mkdirSync(outDir, { recursive: true });

function check(cond, message) {
    if (!cond) throw new Error('check failed: ' + message);
}

const launchOptions = {
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
};

async function shot(page, name, fullPage = false) {
    await page.screenshot({ path: path.join(outDir, name), fullPage });
}

// Waits for a selector; on a timeout the error also says what the result box and the status bar
// showed, so a failure in CI can be read without its screenshot.
async function waitShowing(page, selector, timeout) {
    try {
        await page.waitForSelector(selector, { timeout });
    } catch (e) {
        const say = async (s) => ((await page.$(s)) ? (await page.textContent(s)).trim().slice(0, 300) : '(absent)');
        throw new Error(`${selector} did not appear in ${timeout} ms; result: "${await say('#explain-result')}"; ` +
            `status: "${await say('#status')}"; note: "${await say('#segmentation-note')}"`);
    }
}

// Watches a page: console errors, page errors, and every request it makes.
function watch(page) {
    const seen = { errors: [], requests: [] };
    page.on('console', (m) => { if (m.type() === 'error') seen.errors.push('console: ' + m.text()); });
    page.on('pageerror', (e) => seen.errors.push('page error: ' + e.message));
    page.on('request', (r) => seen.requests.push(r.url()));
    return seen;
}

async function canvasPixels(page, selector) {
    return page.$eval(selector, (c) => c.toDataURL());
}

async function explorer(browser) {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const page = await context.newPage();
    const seen = watch(page);
    const t0 = Date.now();
    const step = (name) => console.log(`  ${((Date.now() - t0) / 1000).toFixed(1)} s  ${name}`);

    // 1. The page loads: every default layer gets a card, the first live update arrives.
    await page.goto(url);
    await page.waitForSelector('body[data-ready="1"]', { timeout: 20000 });
    await page.waitForFunction(() => Number(document.body.dataset.updates || 0) >= 1, null, { timeout: 20000 });
    const model = await page.evaluate(() => fetch('/api/model').then((r) => r.json()));
    const cards = await page.$$eval('.layer', (els) => els.map((e) => e.dataset.layer));
    check(JSON.stringify(cards) === JSON.stringify(model.default_layers), `layer cards ${cards} != ${model.default_layers}`);
    check((await page.$$('#gallery img')).length === 24, 'the gallery shows 24 items');
    check(await page.isVisible('#draw'), 'the drawing canvas is shown for a 1x28x28 model');
    await shot(page, '01-loaded.png');
    step('page loaded');

    // 2. A stroke on the canvas changes the activations, live while drawing.
    await page.click('#clear');
    await page.waitForFunction(() => document.body.dataset.image && document.body.dataset.image.startsWith('u'), null, { timeout: 10000 });
    await page.waitForTimeout(300);
    const before = await canvasPixels(page, 'canvas[data-layer="conv1"]');
    const updatesBefore = await page.evaluate(() => Number(document.body.dataset.updates));
    const box = await page.$eval('#draw', (c) => { const r = c.getBoundingClientRect(); return { x: r.x, y: r.y, w: r.width, h: r.height }; });
    await page.mouse.move(box.x + box.w * 0.3, box.y + box.h * 0.2);
    await page.mouse.down();
    for (let i = 1; i <= 24; i++) {
        await page.mouse.move(box.x + box.w * (0.3 + 0.4 * i / 24), box.y + box.h * (0.2 + 0.6 * i / 24));
        await page.waitForTimeout(25);
    }
    const updatesWhileDrawing = await page.evaluate(() => Number(document.body.dataset.updates));
    await page.mouse.up();
    await page.waitForTimeout(400);
    await page.waitForFunction(() => !document.querySelector('.status.error'), null, { timeout: 5000 });
    const after = await canvasPixels(page, 'canvas[data-layer="conv1"]');
    check(after !== before, 'the stroke changed the conv1 activations');
    check(updatesWhileDrawing - updatesBefore >= 2, `activations updated live while drawing (${updatesWhileDrawing - updatesBefore} updates)`);
    await shot(page, '02-drawn.png');
    step(`stroke: ${updatesWhileDrawing - updatesBefore} live updates while drawing`);

    // 3. Clicking a channel shows its filter, overlay, top-9 patches and feature visualisation.
    await page.click('canvas[data-layer="conv2"]', { position: { x: 5, y: 5 } });
    await page.waitForSelector('#channel-panel:not([hidden])');
    check((await page.textContent('#channel-title')).includes('conv2 · channel 0'), 'the panel names conv2 channel 0');
    await page.waitForSelector('#channel-patches[data-count="9"]', { timeout: 30000 });
    const patchImages = await page.$$eval('#channel-patches img', (imgs) => imgs.map((i) => i.complete && i.naturalWidth > 0));
    check(patchImages.length === 9 && patchImages.every(Boolean), 'nine patch crops are shown');
    await page.waitForFunction(() => {
        const ok = (id) => { const i = document.getElementById(id); return i.complete && i.naturalWidth > 0; };
        return ok('channel-overlay') && ok('channel-filter');
    }, null, { timeout: 10000 });
    await page.waitForSelector('#channel-vis:not([hidden])', { timeout: 30000 });
    await shot(page, '03-channel.png');
    step('channel panel');

    // 4. Occlusion runs with progress and shows a map.
    await page.click('#gallery img[data-index="1"]');
    await page.waitForFunction(() => document.body.dataset.image === 'd1', null, { timeout: 10000 });
    await page.click('#run-occlusion');
    await page.waitForSelector('#explain-result[data-kind="occlusion"] #occlusion-overlay', { timeout: 30000 });
    await page.waitForFunction(() => { const i = document.getElementById('occlusion-overlay'); return i.complete && i.naturalWidth > 0; });
    const occlusionText = await page.textContent('#explain-result');
    check(occlusionText.includes('target'), 'the occlusion summary names the target');
    await shot(page, '04-occlusion.png');
    step('occlusion');

    // 4b. Which map to trust: a table of every method with the metrics' directions.
    await page.click('#run-evaluate');
    await page.waitForSelector('#explain-result[data-kind="evaluate"] #evaluate-table', { timeout: 60000 });
    const evalRows = await page.$$eval('#evaluate-table tbody tr', (rows) => rows.map((r) => r.textContent));
    check(evalRows.length === 8 && evalRows[0].includes('lower is better'), 'the evaluation table names each direction: ' + evalRows[0]);
    check((await page.$$('#evaluate-table td.best')).length === 8, 'one best method per metric');
    await shot(page, '04b-evaluate.png');
    step('evaluate');

    // 5. The map: it zooms, a hovered point shows its image, a click opens it in the explorer.
    await page.click('#tab-map');
    await page.waitForSelector('#map[data-points]', { timeout: 60000 });
    const scale0 = Number(await page.getAttribute('#map', 'data-scale'));
    const mapBox = await page.$eval('#map', (c) => { const r = c.getBoundingClientRect(); return { x: r.x, y: r.y, w: r.width, h: r.height }; });
    await page.mouse.move(mapBox.x + mapBox.w / 2, mapBox.y + mapBox.h / 2);
    await page.mouse.wheel(0, -600);
    await page.waitForFunction((s) => Number(document.getElementById('map').dataset.scale) > s * 1.5, scale0, { timeout: 5000 });
    await page.click('#map-zoom-in');
    await page.waitForTimeout(100);
    const scale1 = Number(await page.getAttribute('#map', 'data-scale'));
    check(scale1 > scale0 * 2, `the map zoomed in (${scale0} -> ${scale1})`);
    await page.click('#map-reset');
    // A point in view: ask the view where point 7 is on screen.
    const target = 7;
    const p = await page.evaluate((i) => {
        const v = window.convscope.state.mapView;
        v.focus(i, 4);
        const [sx, sy] = v.toScreen(v.x[i], v.y[i]);
        const r = v.canvas.getBoundingClientRect();
        return { x: r.x + sx, y: r.y + sy };
    }, target);
    await page.waitForTimeout(100);
    await page.mouse.move(p.x, p.y);
    await page.waitForSelector('#map-hover:not([hidden])', { timeout: 5000 });
    await page.waitForFunction(() => { const i = document.getElementById('map-hover-img'); return i.complete && i.naturalWidth > 0; });
    const hovered = Number(await page.getAttribute('#map-hover', 'data-index'));
    check(hovered === target, `hovering shows point ${target} (got ${hovered})`);
    await shot(page, '05-map.png');
    await page.mouse.click(p.x, p.y);
    await page.waitForSelector('#view-explore:not([hidden])');
    await page.waitForFunction((i) => document.body.dataset.image === 'd' + i, target, { timeout: 10000 });
    check(Number(await page.inputValue('#item-index')) === target, 'the explorer shows the clicked item');
    await shot(page, '06-opened-from-map.png');
    step('map');

    const foreign = seen.requests.filter((r) => !r.startsWith(url) && !r.startsWith('data:'));
    check(foreign.length === 0, 'the explorer only talks to its own server: ' + foreign.join(', '));
    check(seen.errors.length === 0, 'no errors in the page: ' + seen.errors.join(' | '));
    await context.close();
}

// A page opened from a file URL in its own context: every request is recorded, and anything but
// a file or data URL is refused (and fails the checks that look at `requested`).
async function openFromDisk(browser, file) {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const requested = [];
    await context.route('**/*', (route) => {
        const u = route.request().url();
        requested.push(u);
        return u.startsWith('file://') || u.startsWith('data:') ? route.continue() : route.abort();
    });
    const page = await context.newPage();
    const seen = watch(page);
    await page.goto('file://' + path.resolve(file));
    return { context, page, seen, requested };
}

async function report(browser) {
    const { context, page, seen, requested } = await openFromDisk(browser, reportPath);
    await page.waitForSelector('body[data-ready="1"]', { timeout: 20000 });
    for (const id of ['model', 'filters', 'examples', 'trust', 'patches', 'feature-vis', 'map'])
        check(await page.$('section#' + id), `the report has the ${id} section`);
    const rows = await page.$$eval('#layer-table tbody tr', (r) => r.length);
    check(rows >= 9, `the layer table lists the layers (${rows})`);
    // Every picture loads from disk.
    await page.waitForFunction(() => [...document.images].every((i) => i.complete), null, { timeout: 20000 });
    const broken = await page.$$eval('img', (imgs) => imgs.filter((i) => !(i.naturalWidth > 0)).map((i) => i.getAttribute('src')));
    check(broken.length === 0, 'every picture loads: broken ' + broken.join(', '));
    // The interactive map: all points, zoom, hover.
    const points = Number(await page.getAttribute('#map-canvas', 'data-points'));
    check(points === 300, `the map shows every point (${points})`);
    await page.$eval('#map', (s) => s.scrollIntoView());
    await page.click('#map-zoom-in');
    await page.waitForTimeout(100);
    check(Number(await page.getAttribute('#map-canvas', 'data-scale')) > 1.5, 'the report map zooms');
    const p = await page.evaluate(() => {
        const v = window.reportMap;
        v.focus(11, 3);
        const [sx, sy] = v.toScreen(v.x[11], v.y[11]);
        const r = v.canvas.getBoundingClientRect();
        return { x: r.x + sx, y: r.y + sy };
    });
    await page.waitForTimeout(100);
    await page.mouse.move(p.x, p.y);
    await page.waitForSelector('#map-hover:not([hidden])', { timeout: 5000 });
    check(Number(await page.getAttribute('#map-hover', 'data-index')) === 11, 'hovering a report map point shows it');
    await shot(page, '08-report-map.png');
    await page.evaluate(() => window.scrollTo(0, 0));
    await shot(page, '07-report.png', true);
    const foreign = requested.filter((u) => !u.startsWith('file://') && !u.startsWith('data:'));
    check(foreign.length === 0, 'the report makes no network request: ' + foreign.join(', '));
    const seenForeign = seen.requests.filter((u) => !u.startsWith('file://') && !u.startsWith('data:'));
    check(seenForeign.length === 0, 'no request left the page: ' + seenForeign.join(', '));
    check(requested.length > 5, `the report's pictures were read from disk (${requested.length} file requests)`);
    check(seen.errors.length === 0, 'no errors in the report page: ' + seen.errors.join(' | '));
    console.log(`  report: ${requested.length} file:// requests, none to the network`);
    await context.close();
}

// A segmentation model: the predicted classes are shown; a click on them explains that region
// with occlusion, and the attribution button then explains the same region.
async function segmentation(browser) {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const page = await context.newPage();
    const seen = watch(page);
    await page.goto(segUrl);
    await page.waitForSelector('body[data-ready="1"]', { timeout: 20000 });
    await page.waitForFunction(() => Number(document.body.dataset.updates || 0) >= 1, null, { timeout: 20000 });
    check(await page.isVisible('#segmentation-image'), 'a segmentation model shows its predicted classes');
    await page.waitForFunction(() => { const i = document.getElementById('segmentation-image'); return i.complete && i.naturalWidth > 0; });
    // The element's own click waits until it stops moving (the gallery and the layer cards may
    // still be laying out) and checks that the click lands on it; the position is relative to it.
    const seg = await page.$('#segmentation-image');
    const box = await seg.boundingBox();
    await seg.click({ position: { x: box.width / 2, y: box.height / 2 } });
    await waitShowing(page, '#explain-result[data-kind="occlusion"] #explained-region', 30000);
    const text = await page.textContent('#explain-result');
    check(/region: \d+ output pixels/.test(text), 'the occlusion names the clicked region: ' + text);
    const note = await page.textContent('#segmentation-note');
    check(/explaining the region at \((3[12]), (3[12])\)/.test(note), 'the note says which region: ' + note);
    await shot(page, '09-segmentation-occlusion.png');
    await page.click('#run-attribution');
    await waitShowing(page, '#explain-result[data-kind="attribution"] #explained-region', 30000);
    await shot(page, '10-segmentation-attribution.png');
    check(seen.errors.length === 0, 'no errors in the segmentation page: ' + seen.errors.join(' | '));
    await context.close();
}

// A vision transformer: the Attention button shows the attention view; a click on a patch makes
// it the query, and the rollout can be chosen.
async function transformer(browser) {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const page = await context.newPage();
    const seen = watch(page);
    await page.goto(vitUrl);
    await page.waitForSelector('body[data-ready="1"]', { timeout: 20000 });
    await page.waitForFunction(() => Number(document.body.dataset.updates || 0) >= 1, null, { timeout: 20000 });
    check(await page.isVisible('#run-attention'), 'a transformer offers the attention view');
    await page.click('#run-attention');
    await waitShowing(page, '#explain-result[data-kind="attention"] canvas.attention-canvas', 30000);
    const canvas = await page.$('#explain-result canvas.attention-canvas');
    const box = await canvas.boundingBox();
    await canvas.click({ position: { x: box.width * 0.9, y: box.height * 0.1 } });  // row 0, column 3 of 4x4
    const caption = await page.textContent('#explain-result .attention-view .caption');
    check(/patch 0,3's attention at encoder\.layers\.encoder_layer_1/.test(caption), 'a click makes the patch the query: ' + caption);
    await shot(page, '11-vit-attention.png');
    await page.selectOption('#explain-result .attention-view select[aria-label="attention layer"]', 'rollout');
    const rollout = await page.textContent('#explain-result .attention-view .caption');
    check(/rollout of the class token/.test(rollout), 'the rollout can be shown: ' + rollout);
    check(seen.errors.length === 0, 'no errors in the transformer page: ' + seen.errors.join(' | '));
    await context.close();
}

// A transformer's report, opened from disk: each example has the attention view; a click on a
// patch makes it the query, the rollout can be chosen, and nothing is fetched from the network.
async function transformerReport(browser) {
    const { context, page, seen, requested } = await openFromDisk(browser, vitReportPath);
    await page.waitForSelector('body[data-ready="1"]', { timeout: 20000 });
    const views = await page.$$('#examples .attention-view canvas.attention-canvas');
    check(views.length >= 1, `the report shows an attention view per example (${views.length})`);
    const view = await views[0].evaluateHandle((c) => c.closest('.attention-view'));
    await views[0].scrollIntoViewIfNeeded();
    const box = await views[0].boundingBox();
    await views[0].click({ position: { x: box.width * 0.3, y: box.height * 0.6 } });  // row 2, column 1 of 4x4
    const caption = await view.$eval('.caption', (c) => c.textContent);
    check(/patch 2,1's attention at encoder\.layers\.encoder_layer_1/.test(caption), 'a click in the report makes the patch the query: ' + caption);
    await view.$eval('select[aria-label="head"]', (s) => { s.value = '1'; s.dispatchEvent(new Event('change')); });
    const head = await view.$eval('.caption', (c) => c.textContent);
    check(/, head 1 /.test(head), 'a head can be chosen in the report: ' + head);
    await view.$eval('select[aria-label="attention layer"]', (s) => { s.value = 'rollout'; s.dispatchEvent(new Event('change')); });
    const rollout = await view.$eval('.caption', (c) => c.textContent);
    check(/rollout of the class token/.test(rollout), 'the report shows the rollout: ' + rollout);
    await shot(page, '12-vit-report-attention.png');
    const foreign = requested.filter((u) => !u.startsWith('file://') && !u.startsWith('data:'));
    check(foreign.length === 0, 'the transformer report makes no network request: ' + foreign.join(', '));
    check(seen.errors.length === 0, 'no errors in the transformer report: ' + seen.errors.join(' | '));
    await context.close();
}

(async () => {
    const browser = await chromium.launch(launchOptions);
    try {
        console.log('explorer:');
        await explorer(browser);
        console.log('report:');
        await report(browser);
        if (segUrl) {
            console.log('segmentation:');
            await segmentation(browser);
        }
        if (vitUrl) {
            console.log('transformer:');
            await transformer(browser);
        }
        if (vitReportPath) {
            console.log('transformer report:');
            await transformerReport(browser);
        }
        if (millionUrl) {
            console.log('a million-point map:');
            await millionMap(browser, millionUrl, outDir, { check, shot, watch });
        }
        if (millionReportPath) {
            console.log('a million-point map in a report:');
            await millionReport(browser, millionReportPath, outDir, { check, shot, watch });
        }
    } finally {
        await browser.close();
    }
    console.log('browser checks: ok; screenshots in ' + outDir);
})().catch((e) => {
    console.error(e && e.stack ? e.stack : String(e));
    process.exit(1);
});
