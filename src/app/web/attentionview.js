// The attention view of a transformer, shared by the report and the explorer: the input with
// the chosen query token's attention over the patch grid drawn on it. Click a patch to make it
// the query; choose the layer and the head (or their mean), the class token, or the rollout.
// data: the JSON of attention_view (src/app/views.cpp); src: the input picture.
'use strict';

window.attentionView = function (data, src, alt) {
    const [gh, gw] = data.grid;
    const grid = gh * gw;
    const size = 224;
    const state = { layer: data.layers.length - 1, head: -1, query: data.extra_front > 0 ? 0 : data.extra_front + Math.floor(gh / 2) * gw + Math.floor(gw / 2), rollout: false };
    const make = (tag, attrs = {}, text) => {
        const e = document.createElement(tag);
        for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
        if (text !== undefined) e.textContent = text;
        return e;
    };
    const wrap = make('div', { class: 'attention-view' });
    const controls = make('div', { class: 'controls' });
    const layerSel = make('select', { 'aria-label': 'attention layer' });
    data.layers.forEach((l, i) => layerSel.appendChild(make('option', { value: String(i) }, l.name)));
    if (data.rollout) layerSel.appendChild(make('option', { value: 'rollout' }, 'rollout (class token, all layers)'));
    layerSel.value = String(state.layer);
    const headSel = make('select', { 'aria-label': 'head' });
    const fillHeads = () => {
        headSel.textContent = '';
        headSel.appendChild(make('option', { value: '-1' }, 'mean of the heads'));
        const heads = state.rollout ? [] : data.layers[state.layer].heads;
        heads.forEach((_, h) => headSel.appendChild(make('option', { value: String(h) }, 'head ' + h)));
        headSel.value = String(Math.min(state.head, heads.length - 1));
    };
    const cls = make('button', { type: 'button' }, 'class token');
    if (data.extra_front === 0) cls.disabled = true;
    const caption = make('div', { class: 'caption' });
    controls.append(layerSel, headSel, cls);
    const canvas = make('canvas', { width: String(size), height: String(size), class: 'attention-canvas', role: 'img', 'aria-label': alt || 'attention over the input' });
    wrap.append(controls, canvas, caption);
    const img = new Image();
    // Inferno-like ramp: black, purple, orange, yellow.
    const ramp = (t) => {
        const stops = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
        const x = Math.max(0, Math.min(1, t)) * (stops.length - 1);
        const i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
        return stops[i].map((c, k) => Math.round(c + f * (stops[i + 1][k] - c)));
    };
    const values = () => {
        if (state.rollout) return data.rollout;
        const l = data.layers[state.layer];
        const rows = state.head >= 0 && l.heads.length ? l.heads[state.head] : l.mean;
        return rows.slice(state.query * grid, (state.query + 1) * grid);
    };
    function draw() {
        const ctx = canvas.getContext('2d');
        ctx.imageSmoothingEnabled = false;
        if (img.complete && img.naturalWidth) ctx.drawImage(img, 0, 0, size, size);
        else { ctx.fillStyle = '#000'; ctx.fillRect(0, 0, size, size); }
        const v = values();
        let hi = 0;
        for (const x of v) hi = Math.max(hi, x);
        const cw = size / gw, ch = size / gh;
        ctx.globalAlpha = 0.6;
        for (let i = 0; i < grid; ++i) {
            const [r, g, b] = ramp(hi > 0 ? v[i] / hi : 0);
            ctx.fillStyle = `rgb(${r},${g},${b})`;
            ctx.fillRect((i % gw) * cw, Math.floor(i / gw) * ch, cw, ch);
        }
        ctx.globalAlpha = 1;
        const q = state.query - data.extra_front;
        if (!state.rollout && q >= 0 && q < grid) {
            ctx.strokeStyle = '#00e5ff';
            ctx.lineWidth = 2;
            ctx.strokeRect((q % gw) * cw + 1, Math.floor(q / gw) * ch + 1, cw - 2, ch - 2);
        }
        const who = state.rollout ? 'the rollout of the class token over all layers'
            : (q < 0 ? 'the class token' : `patch ${Math.floor(q / gw)},${q % gw}`) + '\'s attention at ' +
              data.layers[state.layer].name + (state.head >= 0 ? ', head ' + state.head : ', mean of the heads');
        caption.textContent = `${who} (largest ${hi.toPrecision(3)}); click a patch to make it the query`;
    }
    layerSel.addEventListener('change', () => {
        state.rollout = layerSel.value === 'rollout';
        if (!state.rollout) state.layer = Number(layerSel.value);
        fillHeads();
        draw();
    });
    headSel.addEventListener('change', () => { state.head = Number(headSel.value); draw(); });
    cls.addEventListener('click', () => { state.query = 0; state.rollout = false; layerSel.value = String(state.layer); draw(); });
    canvas.addEventListener('click', (ev) => {
        const r = canvas.getBoundingClientRect();
        const x = Math.floor((ev.clientX - r.left) / r.width * gw), y = Math.floor((ev.clientY - r.top) / r.height * gh);
        if (x < 0 || y < 0 || x >= gw || y >= gh) return;
        state.query = data.extra_front + y * gw + x;
        if (state.rollout) { state.rollout = false; layerSel.value = String(state.layer); fillHeads(); }
        draw();
    });
    img.onload = draw;
    img.src = src;
    fillHeads();
    draw();
    return wrap;
};
