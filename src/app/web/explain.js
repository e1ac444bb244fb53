// convscope explorer, explanations on demand (occlusion, attributions) and the dataset map.
// Loaded before app.js, which holds the shared state and helpers and starts the app.
'use strict';

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

// A request explains the clicked region of a segmentation when there is one.
function withRegion(request) {
    if (state.region) request.at = state.region;
    return request;
}

function setupExplain() {
    const select = $('attr-method');
    for (const m of state.model.attribution_methods || []) select.appendChild(el('option', { value: m, text: m }));
    const out = $('explain-result');
    const busy = (on) => { for (const id of ['run-occlusion', 'run-attribution', 'run-evaluate', 'run-attention']) $(id).disabled = on; };
    $('run-occlusion').addEventListener('click', async () => {
        if (!state.image) return;
        busy(true);
        out.replaceChildren(el('p', { class: 'note', text: 'occluding…' }));
        try {
            const r = await runJob(withRegion({ kind: 'occlusion', image: state.image }), $('explain-progress'));
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
            const pics = [over, heat];
            if (r.segmentation) {
                pics.push(el('div', {}, [el('img', { src: r.segmentation, alt: 'the explained region', id: 'explained-region' })]));
                items.unshift(el('li', { text: `region: ${r.region_pixels} output pixels of ${r.target_name}, outlined in white` }));
            }
            out.replaceChildren(el('h3', { text: 'Occlusion' }), el('div', { class: 'pics' }, pics), el('ul', {}, items));
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
            const r = await runJob(withRegion({ kind: 'attribution', image: state.image, method }), $('explain-progress'));
            out.replaceChildren(el('h3', { text: method + (r.layer ? ` at ${r.layer}` : '') }),
                el('div', { class: 'pics' }, [el('div', {}, [el('img', { src: r.overlay, alt: 'attribution overlay' })]), el('div', {}, [el('img', { src: r.heat, alt: 'attribution map' })]),
                    ...(r.segmentation ? [el('div', {}, [el('img', { src: r.segmentation, alt: 'the explained region', id: 'explained-region' })])] : [])]),
                el('p', { class: 'note', text: `explaining ${r.target_name} (score ${r.score.toFixed(3)})` }));
            out.dataset.kind = 'attribution';
            reveal(out);
        } catch (e) {
            out.replaceChildren(el('p', { class: 'note error', text: e.message }));
        } finally {
            busy(false);
        }
    });
    setupEvaluate(busy);
    setupAttention(busy);
}

// A transformer's attention on the shown input (an `attention` job), drawn by attentionview.js.
function setupAttention(busy) {
    const out = $('explain-result');
    $('run-attention').hidden = !(state.model && state.model.attention);
    $('run-attention').addEventListener('click', async () => {
        if (!state.image) return;
        busy(true);
        out.replaceChildren(el('p', { class: 'note', text: 'computing the attention…' }));
        try {
            const r = await runJob({ kind: 'attention', image: state.image }, $('explain-progress'));
            out.replaceChildren(el('h3', { text: 'Attention' }), window.attentionView(r, r.input, 'attention over the input'),
                el('p', { class: 'note', text: 'click a patch: where it attends in the chosen layer and head; "rollout": the class token\'s attention through all layers' }));
            out.dataset.kind = 'attention';
            reveal(out);
        } catch (e) {
            out.replaceChildren(el('p', { class: 'note error', text: e.message }));
        } finally {
            busy(false);
        }
    });
}

// Which map to trust: every method scored on the shown input (an `evaluate` job).
function setupEvaluate(busy) {
    const out = $('explain-result');
    $('run-evaluate').addEventListener('click', async () => {
        if (!state.image) return;
        busy(true);
        out.replaceChildren(el('p', { class: 'note', text: 'evaluating every method…' }));
        try {
            const r = await runJob(withRegion({ kind: 'evaluate', image: state.image }), $('explain-progress'));
            const fmt = (v) => (v === null || v === undefined ? '–' : v.toFixed(3));
            const head = el('tr', {}, [el('th', { text: 'metric' }), ...r.methods.map((m) => el('th', { text: m }))]);
            const rows = r.rows.map((row) => el('tr', {}, [
                el('td', { text: `${row.metric} (${row.higher_is_better ? 'higher' : 'lower'} is better)`, title: row.meaning }),
                ...r.methods.map((m) => el('td', { class: row.ranking[0] === m ? 'best' : '', text: fmt(row.value[m]) }))]));
            out.replaceChildren(el('h3', { text: `Which map to trust (explaining ${r.target_name})` }),
                el('div', { class: 'scroll' }, [el('table', { id: 'evaluate-table' }, [el('thead', {}, [head]), el('tbody', {}, rows)])]),
                el('div', { class: 'pics' }, r.curves.map((c) => el('div', {}, [el('img', { src: c.picture, alt: c.name + ' curves' })]))),
                el('p', { class: 'note', text: `curves: the class probability as the most relevant pixels are deleted (fall fast: better) or inserted (rise fast: better), ${r.steps} steps; bold: the best method per metric` }));
            out.dataset.kind = 'evaluate';
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
        // The description as JSON, the points (16 bytes each) as one binary download.
        const m = await api('/api/map?points=0');
        const res = await fetch(m.points);
        if (!res.ok) throw new Error(`the map's points: HTTP ${res.status}`);
        const p = MapView.unpack(await res.arrayBuffer(), m.n);
        const hover = $('map-hover');
        const canvas = $('map');
        // Thumbnails are loaded on demand: the hovered point's item only.
        state.mapView = new MapView(canvas, { x: p.x, y: p.y, labels: p.labels, colours: m.class_colours, unknownColour: m.unknown_colour }, {
            onHover(i, e) {
                if (!state.mapView.placeTooltip(hover, i, e)) return;
                const item = p.items[i];
                const src = `/api/items/${item}.png`;
                if ($('map-hover-img').getAttribute('src') !== src) $('map-hover-img').src = src;
                $('map-hover-label').textContent = `#${item} ${p.labels[i] >= 0 ? m.class_names[p.labels[i]] || p.labels[i] : ''}`;
                hover.dataset.index = String(i);
                hover.dataset.item = String(item);
            },
            onClick(i) {
                hover.hidden = true;
                showView('explore');
                selectItem(p.items[i]);
            },
        });
        state.mapItems = p.items;
        const legend = m.class_names.map((name, c) => el('div', {}, [el('span', { style: `background:rgb(${m.class_colours[c].join(',')})` }), document.createTextNode(name)]));
        $('map-legend').replaceChildren(...legend);
        $('map-info').textContent = `${m.n.toLocaleString('en')} points · t-SNE of ${m.layer || 'the features'} · drag to pan, wheel to zoom, click a point to explore it`;
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
