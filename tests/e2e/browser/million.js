// The explorer's dataset map with a million points (`serve --map`): the frame time of pan and zoom,
// hover exact against a brute-force nearest point, the hovered item's thumbnail loaded on demand,
// and a click that opens the item. Used by run.js.
'use strict';

const path = require('path');
const fs = require('fs');

function percentile(values, q) {
    const s = values.slice().sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

// 150 frames of zooming in, panning and zooming out, one step per frame, on the MapView that
// `viewExpr` names: each frame's drawing time as the view measures it, and the interval between
// frames as the page sees it. Both written to million-map-frames-<name>.json.
async function measureFrames(page, outDir, name, check) {
    const frames = await page.evaluate(async () => {
        const v = window.reportMap || window.convscope.state.mapView;
        const next = () => new Promise((r) => requestAnimationFrame(r));
        v.reset();
        await next();
        await next();
        v.drawTimes.length = 0;
        const intervals = [];
        let last = await next();
        for (let f = 0; f < 150; f++) {
            if (f < 50) v.zoomBy(1.09, v.width * 0.3, v.height * 0.4);
            else if (f < 100) v.panBy(11, -7);
            else v.zoomBy(1 / 1.09, v.width * 0.6, v.height * 0.5);
            const t = await next();
            intervals.push(t - last);
            last = t;
        }
        return { draws: v.drawTimes.slice(), intervals };
    });
    check(frames.draws.length >= 140, `every step drew a frame (${frames.draws.length} of 150)`);
    const draw50 = percentile(frames.draws, 0.5), draw95 = percentile(frames.draws, 0.95);
    const frame50 = percentile(frames.intervals, 0.5), frame95 = percentile(frames.intervals, 0.95);
    const summary = {
        points: 1000000,
        draw_ms: { median: draw50, p95: draw95, max: Math.max(...frames.draws) },
        frame_interval_ms: { median: frame50, p95: frame95, max: Math.max(...frames.intervals) },
    };
    fs.writeFileSync(path.join(outDir, `million-map-frames-${name}.json`), JSON.stringify(summary, null, 2));
    console.log(`  ${name}, a million points: drawing ${draw50.toFixed(1)} ms (median), ${draw95.toFixed(1)} ms (95th percentile); ` +
        `frame interval ${frame50.toFixed(1)} / ${frame95.toFixed(1)} ms`);
    check(draw95 <= 33, `a frame of pan or zoom is drawn in at most 33 ms (95th percentile ${draw95.toFixed(1)} ms)`);
    check(frame50 <= 33, `frames of pan and zoom follow each other within 33 ms (median ${frame50.toFixed(1)} ms)`);
}

// Hovers point `target` at `zoom` and checks that the hover names the nearest of all points to
// the pointer (brute force). Returns the pointer's position.
async function hoverExact(page, target, zoom, check) {
    const p = await page.evaluate(([i, z]) => {
        const v = window.reportMap || window.convscope.state.mapView;
        v.focus(i, z);
        const [sx, sy] = v.toScreen(v.x[i], v.y[i]);
        const r = v.canvas.getBoundingClientRect();
        return { x: Math.round(r.x + sx) + 0.5, y: Math.round(r.y + sy) + 0.5 };
    }, [target, zoom]);
    await page.waitForTimeout(50);
    await page.mouse.move(p.x - 20, p.y - 20);
    await page.mouse.move(p.x, p.y);
    await page.waitForSelector('#map-hover:not([hidden])', { timeout: 5000 });
    const hovered = Number(await page.getAttribute('#map-hover', 'data-index'));
    const nearest = await page.evaluate(({ x, y }) => {
        const v = window.reportMap || window.convscope.state.mapView;
        const r = v.canvas.getBoundingClientRect();
        const [dx, dy] = v.toData(x - r.x, y - r.y);
        let best = -1, bestD = Infinity;
        for (let i = 0; i < v.n; i++) {
            const d = (v.x[i] - dx) ** 2 + (v.y[i] - dy) ** 2;
            if (d < bestD) { bestD = d; best = i; }
        }
        return best;
    }, p);
    check(hovered === nearest, `at zoom ${zoom} hovering shows the nearest point ${nearest} (got ${hovered})`);
    // The map's point i shows item i % 10000 (million_map.py).
    const item = Number(await page.getAttribute('#map-hover', 'data-item'));
    check(item === hovered % 10000, `the hover names point ${hovered}'s item ${hovered % 10000} (got ${item})`);
    return { x: p.x, y: p.y, item };
}

async function millionMap(browser, url, outDir, { check, shot, watch }) {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const page = await context.newPage();
    const seen = watch(page);
    await page.goto(url);
    await page.waitForLoadState('networkidle');
    // Item pictures the explore view itself shows (its item strip) before the map is opened.
    const pictures = () => seen.requests.filter((r) => r.includes('/api/items/') && r.endsWith('.png')).length;
    const shown = pictures();
    await page.click('#tab-map');
    await page.waitForSelector('#map[data-points="1000000"]', { timeout: 60000 });
    const info = await page.textContent('#map-info');
    check(/1,000,000 points/.test(info), 'the map says how many points it shows: ' + info);
    const thumbnails = () => pictures() - shown;
    check(thumbnails() === 0, `no thumbnail is loaded before a point is hovered (${thumbnails()})`);
    await shot(page, '13-million-map.png');

    // 1. Frame time of pan and zoom.
    await measureFrames(page, outDir, 'explorer', check);

    // 2. Real input: the wheel zooms and a drag pans.
    const box = await page.$eval('#map', (c) => { const r = c.getBoundingClientRect(); return { x: r.x, y: r.y, w: r.width, h: r.height }; });
    await page.evaluate(() => window.convscope.state.mapView.reset());
    const scale0 = Number(await page.getAttribute('#map', 'data-scale'));
    await page.mouse.move(box.x + box.w / 2, box.y + box.h / 2);
    await page.mouse.wheel(0, -800);
    await page.waitForFunction((s) => Number(document.getElementById('map').dataset.scale) > s * 2, scale0, { timeout: 5000 });
    const before = await page.evaluate(() => window.convscope.state.mapView.cx);
    await page.mouse.down();
    await page.mouse.move(box.x + box.w / 2 - 200, box.y + box.h / 2, { steps: 8 });
    await page.mouse.up();
    const after = await page.evaluate(() => window.convscope.state.mapView.cx);
    check(after > before, `a drag pans the map (${before} -> ${after})`);

    // 3. Hover is exact: the hovered point is the nearest of all million points to the pointer,
    // found by brute force, at a zoom where the frame draws only one point per cell (1) and where
    // it draws every point (60).
    await hoverExact(page, 123457, 1, check);
    const p = await hoverExact(page, 765431, 60, check);
    // The thumbnail of the hovered point's item, loaded when hovered.
    await page.waitForFunction(() => { const i = document.getElementById('map-hover-img'); return i.complete && i.naturalWidth > 0; });
    const item = p.item;
    const src = await page.getAttribute('#map-hover-img', 'src');
    check(src === `/api/items/${item}.png`, `the hover shows item ${item}'s picture (${src})`);
    check(thumbnails() >= 1 && thumbnails() < 100, `thumbnails are loaded on demand, one per hovered point (${thumbnails()})`);
    await shot(page, '14-million-map-hover.png');

    // 4. A click opens the point's item in the explorer.
    await page.mouse.click(p.x, p.y);
    await page.waitForSelector('#view-explore:not([hidden])');
    await page.waitForFunction((i) => document.body.dataset.image === 'd' + i, item, { timeout: 10000 });
    check(Number(await page.inputValue('#item-index')) === item, 'a click opens the point\'s item in the explorer');
    check(seen.errors.length === 0, 'no errors in the page: ' + seen.errors.join(' | '));
    await context.close();
}

// The report of the same map (report --map), opened from disk: frame time, exact hover, and the
// thumbnail sheet of the hovered item loaded only then.
async function millionReport(browser, reportPath, outDir, { check, shot, watch }) {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const page = await context.newPage();
    const seen = watch(page);
    await page.goto('file://' + path.resolve(reportPath));
    await page.waitForSelector('#map-canvas[data-points="1000000"]', { timeout: 60000 });
    await page.$eval('#map', (s) => s.scrollIntoView());
    const sheets = () => seen.requests.filter((r) => r.includes('/map_thumbs/')).length;
    check(sheets() === 0, `no thumbnail sheet is loaded before a point is hovered (${sheets()})`);
    await measureFrames(page, outDir, 'report', check);
    await hoverExact(page, 222222, 1, check);
    const { item } = await hoverExact(page, 654321, 60, check);
    await page.waitForFunction((k) => { const s = window.reportMapSheets.get(k); return s && s.complete && s.naturalWidth > 0; },
        Math.floor(item / 1024), { timeout: 10000 });
    check(sheets() >= 1 && sheets() <= 3, `thumbnail sheets are loaded on hover only (${sheets()} of 10)`);
    await shot(page, '15-million-report-map.png');
    const foreign = seen.requests.filter((u) => !u.startsWith('file://') && !u.startsWith('data:'));
    check(foreign.length === 0, 'the report makes no network request: ' + foreign.join(', '));
    check(seen.errors.length === 0, 'no errors in the report: ' + seen.errors.join(' | '));
    await context.close();
}

module.exports = { millionMap, millionReport };
