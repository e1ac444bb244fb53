// convscope explorer: pick, upload or draw an input and watch every layer's activations; click a
// channel for its filter, top-9 dataset patches, feature visualisation and overlay; occlusion and
// attributions on demand; the dataset map. Talks only to this server's /api. This file: the shared
// state, server access and helpers, and the start; live.js, inputs.js and explain.js the parts.
'use strict';

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const state = {
    model: null, dataset: null,
    image: null,          // id of the current input ("d<index>" or "u<hash>")
    label: -1,
    galleryStart: 0, gallerySize: 24,
    selected: null,       // {layer, channel}
    region: null,         // segmentation models: [y, x], the output pixel of the clicked region
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
        setupSegmentation();
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
