// convscope explorer, the live view: each layer's activations as the input changes, and a
// channel's panel (filter, top patches, feature visualisation, overlay). Loaded before app.js,
// which holds the shared state and helpers and starts the app.
'use strict';

// --- the live update -------------------------------------------------------------------------

// Queues an input for the live view: {body, type}. Requests are throttled; the newest wins.
function liveUpdate(body, type = 'application/json') {
    state.next = { body, type };
    schedule();
}

function schedule() {
    if (state.timer) return;
    const wait = Math.max(0, state.lastSent + 40 - performance.now());
    state.timer = setTimeout(sendUpdate, wait);
}

async function sendUpdate() {
    state.timer = 0;
    if (!state.next) return;
    if (state.inflight) {
        // Let a fresh request finish; abort one that is taking long, it is stale anyway.
        if (performance.now() - state.inflight.started < 250) { state.pending = true; return; }
        state.inflight.controller.abort();
    }
    const next = state.next;
    state.next = null;
    const seq = ++state.seq;
    const controller = new AbortController();
    state.inflight = { controller, started: performance.now(), seq };
    state.lastSent = performance.now();
    const layers = state.model.default_layers.map(encodeURIComponent).join(',');
    try {
        const t0 = performance.now();
        const res = await fetch(`/api/activations?max_channels=64&layers=${layers}`, {
            method: 'POST', headers: { 'Content-Type': next.type }, body: next.body, signal: controller.signal,
        });
        const j = await res.json();
        if (!res.ok) throw new Error(j.error || `HTTP ${res.status}`);
        if (seq > state.applied) {
            state.applied = seq;
            applyLive(j);
            status(`live update ${Math.round(performance.now() - t0)} ms`);
        }
    } catch (e) {
        if (e.name !== 'AbortError') status(e.message, true);
    } finally {
        if (state.inflight && state.inflight.seq === seq) state.inflight = null;
        if (state.pending || state.next) { state.pending = false; schedule(); }
    }
}

function applyLive(j) {
    const changed = j.image !== state.image;
    state.image = j.image;
    state.label = j.label;
    state.updates++;
    document.body.dataset.image = j.image;
    document.body.dataset.updates = String(state.updates);
    renderPrediction(j.output, j.label);
    renderSegmentation(j.output, changed);
    for (const L of j.layers) renderLayer(L);
    if (!state.model.drawable) $('input-image').src = `/api/images/${j.image}.png`;
    if (state.selected && changed) refreshOverlay();
    if (changed) $('explain-result').replaceChildren();
}

// Segmentation models: the predicted classes over the input; a click picks the region (the
// connected pixels of the class there) that occlusion and attributions then explain.
function renderSegmentation(out, changed) {
    const box = $('segmentation');
    box.hidden = !out.dense;
    if (!out.dense) return;
    if (changed) state.region = null;
    const img = $('segmentation-image');
    img.src = out.segmentation;
    img.dataset.height = String(out.size[0]);
    img.dataset.width = String(out.size[1]);
}

function setupSegmentation() {
    const img = $('segmentation-image');
    img.addEventListener('click', (e) => {
        const r = img.getBoundingClientRect();
        const h = Number(img.dataset.height), w = Number(img.dataset.width);
        const y = Math.min(h - 1, Math.max(0, Math.floor((e.clientY - r.top) / r.height * h)));
        const x = Math.min(w - 1, Math.max(0, Math.floor((e.clientX - r.left) / r.width * w)));
        state.region = [y, x];
        $('segmentation-note').textContent = `explaining the region at (${x}, ${y}) · click another region to change it`;
        $('run-occlusion').click();
    });
}

function renderPrediction(out, label) {
    const order = out.probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 10);
    const rows = order.map(([p, i]) => {
        const row = el('div', { class: 'bar' + (i === out.predicted ? ' top' : '') }, [
            el('span', { class: i === label ? 'truth' : '', text: className(i) }),
            el('div', { class: 'track' }, [el('div', { class: 'fill', style: `width:${(100 * p).toFixed(1)}%` })]),
            el('span', { text: (100 * p).toFixed(1) + '%' }),
        ]);
        return row;
    });
    $('prediction').replaceChildren(...rows);
}

function makeCards() {
    const root = $('layers');
    root.replaceChildren();
    state.cards.clear();
    const info = new Map(state.model.layers.map((l) => [l.name, l]));
    for (const name of state.model.default_layers) {
        const l = info.get(name);
        const head = el('header', {}, [el('b', { text: name }), el('span', { class: 'muted', text: `${l.type} · ${l.output_shape.join('×')}` }), el('span', { class: 'muted range' })]);
        const canvas = el('canvas', { 'data-layer': name, width: '10', height: '10' });
        const card = el('div', { class: 'layer', 'data-layer': name }, [head, canvas]);
        root.appendChild(card);
        const entry = { root: card, canvas, head, layout: null, info: l };
        state.cards.set(name, entry);
        canvas.addEventListener('click', (e) => {
            const c = channelAt(entry, e);
            if (c >= 0) openChannel(name, c);
        });
    }
}

// Draws one layer: a grid of channel maps (colour = the server's viridis table), or bars.
function renderLayer(L) {
    const card = state.cards.get(L.name);
    if (!card) return;
    card.last = L;
    const q = bytesOf(L.data);
    const cmap = state.cmap;
    const canvas = card.canvas;
    const ctx = canvas.getContext('2d');
    const fmt = (v) => Math.abs(v) >= 100 || (v !== 0 && Math.abs(v) < 0.01) ? v.toExponential(1) : v.toFixed(2);
    let note = `range ${fmt(L.lo)} … ${fmt(L.hi)}`;
    const total = L.shape.length === 3 && !L.bars ? L.shape[0] : L.shape.reduce((a, b) => a * b, 1);
    if (L.channels < total) note += ` · first ${L.channels} of ${total}`;
    if (L.factor > 1) note += ` · averaged ${L.factor}×${L.factor}`;
    card.head.querySelector('.range').textContent = note;

    if (L.bars) {
        // 1-D: one bar per unit, height from the value, colour from the table.
        const n = L.channels, bw = n > 300 ? 1 : n > 100 ? 2 : n > 40 ? 4 : 10, gap = n > 300 ? 0 : 1;
        const W = n * (bw + gap), H = 56;
        canvas.width = W; canvas.height = H;
        ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, W, H);
        const lo = Math.min(0, L.lo), hi = Math.max(0, L.hi), span = hi - lo || 1;
        const zeroY = H - ((0 - lo) / span) * H;
        for (let i = 0; i < n; i++) {
            const v = L.lo + (q[i] / 255) * (L.hi - L.lo);
            const y = H - ((v - lo) / span) * H;
            const c = cmap[q[i]];
            ctx.fillStyle = `rgb(${c & 255},${(c >> 8) & 255},${(c >> 16) & 255})`;
            ctx.fillRect(i * (bw + gap), Math.min(y, zeroY), bw, Math.max(1, Math.abs(zeroY - y)));
        }
        ctx.fillStyle = '#999'; ctx.fillRect(0, Math.round(zeroY), W, 1);
        card.layout = { kind: 'bars', bw, gap, n };
    } else {
        const h = L.height, w = L.width, C = L.channels;
        const s = Math.max(1, Math.round(44 / Math.max(h, w)));
        const tw = w * s, th = h * s, gap = 2;
        const avail = Math.max(tw, card.root.clientWidth - 22);
        const cols = Math.max(1, Math.min(C, Math.floor((avail + gap) / (tw + gap))));
        const rows = Math.ceil(C / cols);
        const W = cols * (tw + gap) - gap, H = rows * (th + gap) - gap;
        if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
        const img = ctx.createImageData(W, H);
        const px = new Uint32Array(img.data.buffer);
        px.fill(0xffffffff);
        for (let c = 0; c < C; c++) {
            const ox = (c % cols) * (tw + gap), oy = Math.floor(c / cols) * (th + gap);
            const base = c * h * w;
            for (let y = 0; y < h; y++) {
                for (let x = 0; x < w; x++) {
                    const colour = cmap[q[base + y * w + x]];
                    for (let dy = 0; dy < s; dy++) {
                        const row = (oy + y * s + dy) * W + ox + x * s;
                        for (let dx = 0; dx < s; dx++) px[row + dx] = colour;
                    }
                }
            }
        }
        ctx.putImageData(img, 0, 0);
        card.layout = { kind: 'tiles', cols, tw, th, gap, n: C };
    }
    highlightSelected(card);
}

// Lays every card out again for the current width (the panel opened or closed, the window
// changed size).
function relayout() {
    for (const card of state.cards.values()) if (card.last) renderLayer(card.last);
}

function channelAt(card, e) {
    const lay = card.layout;
    if (!lay) return -1;
    const r = card.canvas.getBoundingClientRect();
    const x = (e.clientX - r.left) * (card.canvas.width / r.width);
    const y = (e.clientY - r.top) * (card.canvas.height / r.height);
    if (lay.kind === 'bars') {
        const i = Math.floor(x / (lay.bw + lay.gap));
        return i >= 0 && i < lay.n ? i : -1;
    }
    const col = Math.floor(x / (lay.tw + lay.gap)), row = Math.floor(y / (lay.th + lay.gap));
    const c = row * lay.cols + col;
    return col < lay.cols && c >= 0 && c < lay.n ? c : -1;
}

function highlightSelected(card) {
    const sel = state.selected;
    const lay = card.layout;
    if (!sel || sel.layer !== card.info.name || !lay) return;
    const ctx = card.canvas.getContext('2d');
    ctx.strokeStyle = '#ff2d7a';
    ctx.lineWidth = 2;
    if (lay.kind === 'bars') {
        ctx.strokeRect(sel.channel * (lay.bw + lay.gap), 1, lay.bw, card.canvas.height - 2);
    } else {
        const ox = (sel.channel % lay.cols) * (lay.tw + lay.gap), oy = Math.floor(sel.channel / lay.cols) * (lay.th + lay.gap);
        ctx.strokeRect(ox + 1, oy + 1, lay.tw - 2, lay.th - 2);
    }
}

// --- a channel -------------------------------------------------------------------------------

function openChannel(layer, channel) {
    const prev = state.selected && state.cards.get(state.selected.layer);
    state.selected = { layer, channel };
    if (prev) redrawLast(prev);
    const card = state.cards.get(layer);
    if (card) highlightSelected(card);
    const info = card ? card.info : state.model.layers.find((l) => l.name === layer);
    const opening = $('channel-panel').hidden;
    $('channel-panel').hidden = false;
    if (opening) relayout();
    $('channel-title').textContent = `${layer} · ${info.output_shape.length === 3 && info.output_shape[1] * info.output_shape[2] > 1 ? 'channel' : 'unit'} ${channel}`;
    document.body.dataset.channel = `${layer}:${channel}`;

    refreshOverlay();

    const filterImg = $('channel-filter');
    if (info.filter) {
        $('channel-filter-title').textContent = info.filter === layer ? 'Filter' : `Filter (of ${info.filter})`;
        filterImg.hidden = false;
        filterImg.src = `/api/filter.png?layer=${encodeURIComponent(info.filter)}&channel=${channel}`;
        $('channel-filter-note').textContent = 'blue negative, white zero, red positive weights';
    } else {
        $('channel-filter-title').textContent = 'Filter';
        filterImg.hidden = true;
        filterImg.removeAttribute('src');
        $('channel-filter-note').textContent = `${info.type} has no spatial filter of its own.`;
    }

    const patches = $('channel-patches');
    patches.replaceChildren(el('p', { class: 'note', text: 'scanning the dataset…' }));
    const isCurrent = () => state.selected && state.selected.layer === layer && state.selected.channel === channel;
    runJob({ kind: 'patches', layer, channel }, $('patches-progress')).then((r) => {
        if (!isCurrent()) return;
        const figs = r.entries.map((e) => {
            const img = el('img', { src: e.crop, alt: `item ${e.index}`, title: `item ${e.index}: ${e.label_name}, max ${e.value.toFixed(3)} at (${e.y}, ${e.x})` });
            img.addEventListener('click', () => selectItem(e.index));
            return el('figure', { 'data-index': String(e.index) }, [img, el('figcaption', { text: `#${e.index} ${e.label >= 0 ? e.label_name : ''}` })]);
        });
        patches.replaceChildren(...figs);
        patches.dataset.count = String(figs.length);
    }).catch((e) => { if (isCurrent()) patches.replaceChildren(el('p', { class: 'note error', text: e.message })); });

    const vis = $('channel-vis');
    vis.hidden = true;
    $('channel-vis-note').textContent = 'optimising an input for this channel…';
    runJob({ kind: 'feature-vis', layer, channel }, $('vis-progress')).then((r) => {
        if (!isCurrent()) return;
        vis.src = r.image;
        vis.hidden = false;
        $('channel-vis-note').textContent = `mean activation ${r.initial_activation.toFixed(3)} → ${r.activation.toFixed(3)} after ${r.steps} steps`;
    }).catch((e) => { if (isCurrent()) $('channel-vis-note').textContent = e.message; });
}

function refreshOverlay() {
    const sel = state.selected;
    if (!sel || !state.image) return;
    const info = state.model.layers.find((l) => l.name === sel.layer);
    const img = $('channel-overlay');
    if (info && info.output_shape.length === 3 && info.output_shape[1] * info.output_shape[2] > 1) {
        img.hidden = false;
        img.src = `/api/overlay.png?image=${encodeURIComponent(state.image)}&layer=${encodeURIComponent(sel.layer)}&channel=${sel.channel}`;
        $('channel-overlay-note').textContent = 'the channel\'s activation (viridis) upsampled over the input';
    } else {
        img.hidden = true;
        $('channel-overlay-note').textContent = 'a 1-D layer has no map to overlay; its value is the bar you clicked';
    }
}

// Re-renders a card from its last data (clears an old highlight).
function redrawLast(card) {
    if (card.last) renderLayer(card.last);
}
