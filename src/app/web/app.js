// convscope explorer: pick, upload or draw an input and watch every layer's activations; click a
// channel for its filter, top-9 dataset patches, feature visualisation and overlay; occlusion and
// attributions on demand; the dataset map. Talks only to this server's /api.
'use strict';

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const state = {
    model: null, dataset: null,
    image: null,          // id of the current input ("d<index>" or "u<hash>")
    label: -1,
    galleryStart: 0, gallerySize: 24,
    selected: null,       // {layer, channel}
    cards: new Map(),     // layer name -> {root, canvas, head, layout}
    cmap: null,           // Uint32Array(256) packed RGBA
    // live updates: one request in flight, newer input waits or supersedes a slow one
    next: null, timer: 0, inflight: null, pending: false, lastSent: 0, seq: 0, applied: 0, updates: 0,
    mapView: null, mapLoading: false,
    drawing: false, lastPoint: null,
};

// --- server access ---------------------------------------------------------------------------

async function api(path, options = {}) {
    const res = await fetch(path, options);
    const type = res.headers.get('Content-Type') || '';
    const body = type.includes('application/json') ? await res.json() : null;
    if (!res.ok) throw new Error(body && body.error ? body.error : `HTTP ${res.status}`);
    return body;
}

function postJson(path, obj) {
    return api(path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(obj) });
}

// Starts a background job and polls it until it ends, showing its progress.
async function runJob(request, progressEl) {
    let st = await postJson('/api/jobs', request);
    if (progressEl) { progressEl.hidden = false; progressEl.value = st.progress || 0; }
    try {
        while (st.state === 'queued' || st.state === 'running') {
            await sleep(150);
            st = await api('/api/jobs/' + st.id);
            if (progressEl) progressEl.value = st.progress || 0;
        }
    } finally {
        if (progressEl) progressEl.hidden = true;
    }
    if (st.state === 'done') return st.result;
    throw new Error(st.error || `job ${st.state}`);
}

function status(text, isError = false) {
    const el = $('status');
    el.textContent = text;
    el.classList.toggle('error', isError);
}

function bytesOf(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
}

function base64Of(bytes) {
    let bin = '';
    for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(bin);
}

function className(c) {
    const names = state.model.class_names || [];
    return c >= 0 && c < names.length ? names[c] : String(c);
}

function el(tag, attrs = {}, children = []) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
        if (k === 'text') e.textContent = v;
        else if (k === 'class') e.className = v;
        else if (k === 'style') e.style.cssText = v;  // CSSOM: allowed by the page's CSP
        else e.setAttribute(k, v);
    }
    for (const c of children) e.appendChild(c);
    return e;
}

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
    for (const L of j.layers) renderLayer(L);
    if (!state.model.drawable) $('input-image').src = `/api/images/${j.image}.png`;
    if (state.selected && changed) refreshOverlay();
    if (changed) $('explain-result').replaceChildren();
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

// --- inputs ----------------------------------------------------------------------------------

function setupDrawing() {
    const canvas = $('draw');
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const [, H, W] = state.model.input_shape;
    const small = document.createElement('canvas');
    small.width = W; small.height = H;
    const sctx = small.getContext('2d', { willReadFrequently: true });

    const pos = (e) => {
        const r = canvas.getBoundingClientRect();
        return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
    };
    const send = () => {
        sctx.imageSmoothingEnabled = true;
        sctx.imageSmoothingQuality = 'high';
        sctx.clearRect(0, 0, W, H);
        sctx.drawImage(canvas, 0, 0, W, H);
        const rgba = sctx.getImageData(0, 0, W, H).data;
        const gray = new Uint8Array(W * H);
        for (let i = 0; i < W * H; i++) gray[i] = rgba[4 * i];
        liveUpdate(JSON.stringify({ gray: base64Of(gray), width: W, height: H }));
    };
    const stroke = (from, to) => {
        ctx.strokeStyle = '#fff';
        ctx.lineCap = 'round';
        ctx.lineJoin = 'round';
        ctx.lineWidth = parseFloat($('brush').value) * canvas.width / W;
        ctx.beginPath();
        ctx.moveTo(from[0], from[1]);
        ctx.lineTo(to[0], to[1]);
        ctx.stroke();
    };
    canvas.addEventListener('pointerdown', (e) => {
        canvas.setPointerCapture(e.pointerId);
        state.drawing = true;
        state.lastPoint = pos(e);
        stroke(state.lastPoint, state.lastPoint);
        send();
    });
    canvas.addEventListener('pointermove', (e) => {
        if (!state.drawing) return;
        const p = pos(e);
        stroke(state.lastPoint, p);
        state.lastPoint = p;
        send();
    });
    const end = () => { if (state.drawing) { state.drawing = false; send(); } };
    canvas.addEventListener('pointerup', end);
    canvas.addEventListener('pointercancel', end);
    $('clear').addEventListener('click', () => {
        ctx.fillStyle = '#000';
        ctx.fillRect(0, 0, canvas.width, canvas.height);
        send();
    });
}

// Shows a picture of the current input in the drawing canvas, so one can draw over it.
function showInDrawing(src) {
    const canvas = $('draw');
    const img = new Image();
    img.onload = () => {
        const ctx = canvas.getContext('2d');
        ctx.imageSmoothingEnabled = false;
        ctx.fillStyle = '#000';
        ctx.fillRect(0, 0, canvas.width, canvas.height);
        ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    };
    img.src = src;
}

function selectItem(index) {
    const n = state.dataset.size;
    if (!(index >= 0 && index < n)) { status(`item ${index} does not exist (0..${n - 1})`, true); return; }
    $('item-index').value = index;
    liveUpdate(JSON.stringify({ index }));
    if (state.model.drawable) showInDrawing(`/api/items/${index}.png`);
    const start = Math.floor(index / state.gallerySize) * state.gallerySize;
    if (start !== state.galleryStart) loadGallery(start);
    for (const img of $('gallery').querySelectorAll('img')) img.classList.toggle('current', Number(img.dataset.index) === index);
}

async function loadGallery(start) {
    const n = state.dataset.size;
    start = Math.max(0, Math.min(start, n - 1));
    state.galleryStart = start;
    const items = await api(`/api/items?start=${start}&count=${state.gallerySize}`);
    const imgs = items.map((it) => {
        const img = el('img', { src: `/api/items/${it.index}.png`, alt: `item ${it.index}`, title: `#${it.index} ${it.label >= 0 ? it.label_name : ''}`, 'data-index': String(it.index) });
        img.addEventListener('click', () => selectItem(it.index));
        return img;
    });
    $('gallery').replaceChildren(...imgs);
}

function setupInputs() {
    $('page-prev').addEventListener('click', () => loadGallery(state.galleryStart - state.gallerySize));
    $('page-next').addEventListener('click', () => loadGallery(state.galleryStart + state.gallerySize));
    $('item-go').addEventListener('click', () => selectItem(Number($('item-index').value)));
    $('item-index').addEventListener('keydown', (e) => { if (e.key === 'Enter') selectItem(Number($('item-index').value)); });
    $('upload').addEventListener('change', async (e) => {
        const file = e.target.files[0];
        if (!file) return;
        const bytes = await file.arrayBuffer();
        liveUpdate(bytes, file.type && file.type.startsWith('image/') ? file.type : 'application/octet-stream');
        e.target.value = '';
        // The drawing canvas shows what the model sees once the update arrives.
        if (state.model.drawable) {
            const waitFor = state.seq + 1;
            const poll = setInterval(() => {
                if (state.applied >= waitFor) { clearInterval(poll); showInDrawing(`/api/images/${state.image}.png`); }
            }, 50);
            setTimeout(() => clearInterval(poll), 10000);
        }
    });
}

// --- explanations ----------------------------------------------------------------------------

function boxDiv(box, H, W, cls) {
    const [y0, x0, y1, x1] = box;
    return el('div', { class: 'box ' + cls, style: `left:${100 * x0 / W}%;top:${100 * y0 / H}%;width:${100 * (x1 - x0) / W}%;height:${100 * (y1 - y0) / H}%` });
}

// Scrolls a result into view once its pictures have their size.
function reveal(node) {
    const pending = [...node.querySelectorAll('img')].filter((i) => !i.complete)
        .map((i) => new Promise((r) => { i.addEventListener('load', r); i.addEventListener('error', r); }));
    Promise.all(pending).then(() => node.scrollIntoView({ block: 'end' }));
}

function setupExplain() {
    const select = $('attr-method');
    for (const m of state.model.attribution_methods || []) select.appendChild(el('option', { value: m, text: m }));
    const out = $('explain-result');
    const busy = (on) => { $('run-occlusion').disabled = on; $('run-attribution').disabled = on; };
    $('run-occlusion').addEventListener('click', async () => {
        if (!state.image) return;
        busy(true);
        out.replaceChildren(el('p', { class: 'note', text: 'occluding…' }));
        try {
            const r = await runJob({ kind: 'occlusion', image: state.image }, $('explain-progress'));
            const [H, W] = r.input_size;
            const over = el('div', {}, [el('img', { src: r.overlay, alt: 'occlusion overlay', id: 'occlusion-overlay' }), boxDiv(r.important_region, H, W, '')]);
            for (const f of r.confounders.slice(0, 5)) over.appendChild(boxDiv(f.window, H, W, 'flag'));
            const heat = el('div', {}, [el('img', { src: r.heat, alt: 'occlusion map' })]);
            const items = [el('li', { text: `target ${r.target_name} (p = ${r.clean_prob.toFixed(3)}), largest drop ${r.max_drop.toPrecision(3)}` }),
                el('li', { text: `yellow: most important region (patch ${r.patch}, stride ${r.stride})` })];
            if (r.confounders.length) {
                for (const f of r.confounders.slice(0, 5))
                    items.push(el('li', { class: 'error', text: `possible confounder: occluding [${f.window.join(', ')}] gives ${f.class_name} (p = ${f.prob.toFixed(2)})` }));
            } else {
                items.push(el('li', { text: 'no confounders: occluding outside that region never changes the prediction' }));
            }
            out.replaceChildren(el('h3', { text: 'Occlusion' }), el('div', { class: 'pics' }, [over, heat]), el('ul', {}, items));
            out.dataset.kind = 'occlusion';
            reveal(out);
        } catch (e) {
            out.replaceChildren(el('p', { class: 'note error', text: e.message }));
        } finally {
            busy(false);
        }
    });
    $('run-attribution').addEventListener('click', async () => {
        if (!state.image) return;
        busy(true);
        const method = select.value;
        out.replaceChildren(el('p', { class: 'note', text: `computing ${method}…` }));
        try {
            const r = await runJob({ kind: 'attribution', image: state.image, method }, $('explain-progress'));
            out.replaceChildren(el('h3', { text: method + (r.layer ? ` at ${r.layer}` : '') }),
                el('div', { class: 'pics' }, [el('div', {}, [el('img', { src: r.overlay, alt: 'attribution overlay' })]), el('div', {}, [el('img', { src: r.heat, alt: 'attribution map' })])]),
                el('p', { class: 'note', text: `explaining ${r.target_name} (score ${r.score.toFixed(3)})` }));
            out.dataset.kind = 'attribution';
            reveal(out);
        } catch (e) {
            out.replaceChildren(el('p', { class: 'note error', text: e.message }));
        } finally {
            busy(false);
        }
    });
}

// --- the dataset map -------------------------------------------------------------------------

async function ensureMap() {
    if (state.mapView || state.mapLoading) return;
    state.mapLoading = true;
    $('map-info').textContent = 'computing the map (t-SNE of the penultimate layer)…';
    try {
        await runJob({ kind: 'map' }, $('map-progress'));
        const m = await api('/api/map');
        const hover = $('map-hover');
        const canvas = $('map');
        state.mapView = new MapView(canvas, { x: m.x, y: m.y, labels: m.labels, colours: m.class_colours, unknownColour: m.unknown_colour }, {
            onHover(i, e) {
                if (i < 0) { hover.hidden = true; return; }
                const r = canvas.getBoundingClientRect();
                hover.hidden = false;
                hover.style.left = `${Math.min(e.clientX - r.left + 14, r.width - 100)}px`;
                hover.style.top = `${Math.max(0, e.clientY - r.top - 100)}px`;
                const src = `/api/items/${i}.png`;
                if ($('map-hover-img').getAttribute('src') !== src) $('map-hover-img').src = src;
                $('map-hover-label').textContent = `#${i} ${m.labels[i] >= 0 ? m.class_names[m.labels[i]] || m.labels[i] : ''}`;
                hover.dataset.index = String(i);
            },
            onClick(i) {
                hover.hidden = true;
                showView('explore');
                selectItem(i);
            },
        });
        const legend = m.class_names.map((name, c) => el('div', {}, [el('span', { style: `background:rgb(${m.class_colours[c].join(',')})` }), document.createTextNode(name)]));
        $('map-legend').replaceChildren(...legend);
        $('map-info').textContent = `${m.n} items · t-SNE of ${m.layer} · drag to pan, wheel to zoom, click a point to explore it`;
    } catch (e) {
        $('map-info').textContent = e.message;
        $('map-info').classList.add('error');
    } finally {
        state.mapLoading = false;
    }
}

function showView(view) {
    for (const b of document.querySelectorAll('.tab')) b.classList.toggle('active', b.dataset.view === view);
    $('view-explore').hidden = view !== 'explore';
    $('view-map').hidden = view !== 'map';
    if (view === 'map') {
        ensureMap();
        if (state.mapView) state.mapView.resize();
    }
}

// --- start -----------------------------------------------------------------------------------

async function main() {
    try {
        const [model, dataset] = await Promise.all([api('/api/model'), api('/api/dataset')]);
        state.model = model;
        state.dataset = dataset;
        state.cmap = new Uint32Array(model.colormap.map(([r, g, b]) => ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0));
        $('model-name').textContent = `${model.name} · input ${model.input_shape.join('×')} · ${dataset.spec} (${dataset.size} items)`;
        if (model.preprocess) $('model-name').title = `preprocessing: ${model.preprocess.text}`;
        $('draw-area').hidden = !model.drawable;
        $('input-view').hidden = model.drawable;
        for (const b of document.querySelectorAll('.tab')) b.addEventListener('click', () => showView(b.dataset.view));
        $('channel-close').addEventListener('click', () => { $('channel-panel').hidden = true; state.selected = null; relayout(); });
        let resizeTimer = 0;
        window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(relayout, 100); });
        $('map-zoom-in').addEventListener('click', () => state.mapView && state.mapView.zoomBy(1.6));
        $('map-zoom-out').addEventListener('click', () => state.mapView && state.mapView.zoomBy(1 / 1.6));
        $('map-reset').addEventListener('click', () => state.mapView && state.mapView.reset());
        makeCards();
        if (model.drawable) setupDrawing();
        setupInputs();
        setupExplain();
        await loadGallery(0);
        selectItem(0);
        document.body.dataset.ready = '1';
        status('ready');
    } catch (e) {
        status(e.message, true);
    }
}

// For tools and tests: the app's state (read-only use).
window.convscope = { state };
main();
