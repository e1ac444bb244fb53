// Builds the report page from window.REPORT (inline data written by `convscope report`).
// Everything it shows is local: pictures are files beside the page, the map's thumbnails come
// from one sprite picture, nothing is fetched.
'use strict';

(function () {
    const R = window.REPORT;
    const root = document.getElementById('report');

    function el(tag, attrs = {}, children = []) {
        const e = document.createElement(tag);
        for (const [k, v] of Object.entries(attrs)) {
            if (k === 'text') e.textContent = v;
            else if (k === 'class') e.className = v;
            else e.setAttribute(k, v);
        }
        for (const c of children) if (c) e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
        return e;
    }
    const pic = (src, alt, cls = 'pic') => el('img', { src, alt, class: cls });
    const fig = (src, caption, alt) => el('figure', {}, [pic(src, alt || caption), el('figcaption', { text: caption })]);
    const pct = (v) => (100 * v).toFixed(2) + '%';
    const num = (v) => (Math.abs(v) >= 1000 ? v.toLocaleString('en-US') : String(v));
    // "5x5 /1 p2": size, effective stride and padding (one figure where rows and columns agree).
    const pair = (p, sep) => (p[0] === p[1] ? String(p[0]) : p[0] + sep + p[1]);
    const rfText = (rf) => (rf.kind !== 'exact' ? rf.kind
        : `${rf.size[0]}x${rf.size[1]} /${pair(rf.stride, 'x')} p${pair(rf.padding, 'x')}`);

    function section(id, title, lead, children) {
        return el('section', { id }, [el('h2', { text: title }), lead ? el('p', { class: 'lead', text: lead }) : null, ...children]);
    }

    // A picture with boxes [y0, x0, y1, x1] (input pixels) drawn over it.
    function boxed(src, alt, H, W, boxes) {
        const wrap = el('div', { class: 'boxed' }, [pic(src, alt)]);
        for (const [box, cls] of boxes) {
            const [y0, x0, y1, x1] = box;
            wrap.appendChild(el('div', { class: 'box ' + cls, style: `left:${100 * x0 / W}%;top:${100 * y0 / H}%;width:${100 * (x1 - x0) / W}%;height:${100 * (y1 - y0) / H}%` }));
        }
        return wrap;
    }

    // --- header ---
    const m = R.model;
    const header = el('header', { class: 'top' }, [
        el('h1', { text: R.title }),
        el('div', { class: 'meta', text: `${m.file} · sha256 ${m.sha256 ? m.sha256.slice(0, 16) + '…' : 'n/a'} · input ${m.input_shape.join('×')} · ${m.num_classes} classes · data ${R.data.spec} (${num(R.data.size)} items) · convscope ${R.version}` }),
        R.preprocess ? el('div', { class: 'meta', text: `preprocessing: ${R.preprocess.text}` }) : null,
    ].filter((x) => x));
    const sections = [];
    const toc = [];
    const add = (id, title, lead, children) => { toc.push([id, title]); sections.push(section(id, title, lead, children)); };

    // --- the model ---
    {
        const stats = el('div', { class: 'stats' }, [
            el('div', { class: 'stat' }, [el('b', { text: R.accuracy === null ? 'n/a' : pct(R.accuracy) }), el('span', { text: R.accuracy === null ? (R.data.has_labels ? 'accuracy (labels do not match the model\'s classes: see "Left out")' : 'accuracy (no labels)') : `accuracy on the first ${num(R.evaluated)} items` })]),
            el('div', { class: 'stat' }, [el('b', { text: num(m.parameters) }), el('span', { text: 'parameters' })]),
            el('div', { class: 'stat' }, [el('b', { text: String(R.layers.length) }), el('span', { text: 'layers (modules at every depth)' })]),
        ]);
        const chosen = new Set(R.chosen_layers);
        const rows = R.layers.map((l) => el('tr', { class: `depth${Math.min(3, l.depth)}` + (chosen.has(l.name) ? ' chosen' : '') }, [
            el('td', { text: l.name }), el('td', { text: l.type }), el('td', { text: l.output_shape.length ? l.output_shape.join('×') : '–' }),
            el('td', { class: 'num', text: num(l.parameters) }), el('td', { text: rfText(l.receptive_field) }),
        ]));
        const table = el('div', { class: 'scroll' }, [el('table', { id: 'layer-table' }, [
            el('thead', {}, [el('tr', {}, ['layer', 'type', 'output', 'parameters', 'receptive field (size /stride pad)'].map((t) => el('th', { text: t })))]),
            el('tbody', {}, rows)])]);
        add('model', 'The model', 'Every module as a dotted path, with its output shape and the receptive field of one output unit in input pixels. Bold: the layers the sections below look into.', [stats, table]);
    }

    // --- filters ---
    if (R.filters.length) {
        const figs = R.filters.map((f) => fig(f.picture,
            `${f.layer}: ${f.shown} of ${f.weight_shape[0]} filters, weights ${f.weight_shape.join('×')} (${f.mode}); mean noise score ${f.mean_noise.toFixed(2)}` +
            (f.noisiest.length ? `; noisiest: ${f.noisiest.map((n) => `#${n.filter} ${n.noise.toFixed(2)}`).join(', ')}` : ''), `filters of ${f.layer}`));
        add('filters', 'Filters', 'The learned weights. Blue is negative, white zero, red positive (colour tiles: the three input channels). Smooth, oriented patterns are what training usually gives; high-frequency noise in a first layer hints at a problem. The noise score is the share of a filter\'s energy at high spatial frequencies.', [el('div', { class: 'grid' }, figs)]);
    }

    // --- examples ---
    if (R.examples.length) {
        const items = R.examples.map((e) => {
            const H = m.input_shape[1], W = m.input_shape[2];
            const verdict = e.label < 0 ? null : el('span', { class: 'badge ' + (e.correct ? 'good' : 'bad'), text: e.correct ? 'correct' : 'wrong' });
            const title = e.segmentation
                ? el('h3', { text: `Item ${e.index}: ${e.predicted_name} predicted at ${(100 * e.prob).toFixed(1)}% of the pixels` })
                : el('h3', {}, [`Item ${e.index}: ${e.label >= 0 ? 'label ' + e.label_name + ', ' : ''}predicted ${e.predicted_name} (p = ${e.prob.toFixed(3)})`, verdict]);
            const top = el('div', { class: 'row' }, [fig(e.input, 'input as the model sees it')]);
            if (e.segmentation) top.appendChild(fig(e.segmentation, `predicted classes; outlined: the pixels of ${e.predicted_name}, which the maps explain`));
            const o = e.occlusion;
            if (o) {
                const boxes = [[o.important_region, '']].concat(o.confounders.slice(0, 5).map((f) => [f.window, 'flag']));
                top.appendChild(el('figure', {}, [boxed(o.overlay, 'occlusion overlay', H, W, boxes), el('figcaption', { text: `occlusion (patch ${o.patch}, stride ${o.stride}): yellow = most important region, largest drop ${o.max_drop.toPrecision(3)}` })]));
                top.appendChild(fig(o.heat, 'probability drop per pixel'));
            }
            for (const a of e.attributions) top.appendChild(fig(a.overlay, `${a.method}${a.layer ? ' at ' + a.layer : ''} for ${a.target_name}`));
            const parts = [title, top];
            if (o) {
                const flags = o.confounders.length
                    ? o.confounders.slice(0, 5).map((f) => el('li', { class: 'warn', text: `possible confounder: occluding rows ${f.window[0]}–${f.window[2]}, columns ${f.window[1]}–${f.window[3]} (outside the important region) makes it ${f.class_name} (p = ${f.prob.toFixed(2)})` }))
                    : [el('li', { text: 'no confounder flags: occluding outside the important region never changes the prediction' })];
                parts.push(el('ul', { class: 'flags' }, flags));
            }
            if (e.attention) {
                parts.push(el('h4', { text: 'attention' }));
                parts.push(window.attentionView(e.attention, e.input, `attention of item ${e.index}`));
            }
            if (e.activations.length) {
                parts.push(el('h4', { text: 'activations' }));
                parts.push(el('div', { class: 'grid' }, e.activations.map((a) => el('figure', {}, [
                    el('div', { class: 'row' }, [pic(a.picture, `activations of ${a.layer}`), a.overlay ? pic(a.overlay, `strongest channels of ${a.layer}`) : null]),
                    el('figcaption', { text: `${a.layer}${a.overlay ? ' · right: its strongest channels over the input' : ''}` })]))));
            }
            return el('div', { class: 'example', 'data-index': String(e.index) }, parts);
        });
        if (R.dense)
            add('examples', 'Segmentation examples', 'The first items with the classes the model predicts per pixel. Each explains its main class (the one predicted at the most pixels, background aside) over the pixels predicted as it: the occlusion map (which input regions that mean score depends on) and gradient attributions.', items);
        else
            add('examples', 'Correct and wrong predictions', 'A few items the model classifies correctly and a few it gets wrong, with their activation maps, the occlusion map (which regions the prediction depends on, and flags for regions outside them that change it), and gradient attributions.', items);
    }

    // --- which map to trust ---
    if (R.trust) {
        const T = R.trust;
        const fmt = (v) => (v === null || v === undefined ? '–' : Math.abs(v) >= 100 || Math.abs(v) < 0.001 ? v.toExponential(2) : v.toFixed(3));
        const rows = T.rows.map((r) => el('tr', {}, [
            el('td', { text: r.metric, title: r.meaning }),
            el('td', { text: r.higher_is_better ? 'higher is better' : 'lower is better' }),
            ...T.methods.map((m) => el('td', { class: 'num' + (r.ranking[0] === m ? ' best' : ''), text: fmt(r.mean ? r.mean[m] : null) })),
        ]));
        const table = el('div', { class: 'scroll' }, [el('table', { id: 'trust-table' }, [
            el('thead', {}, [el('tr', {}, ['metric', 'direction', ...T.methods].map((t) => el('th', { text: t })))]),
            el('tbody', {}, rows)])]);
        const figs = T.curves.map((c) => fig(c.picture, `${c.name}: the mean score as pixels are ${c.name.startsWith('deletion') ? 'deleted' : 'inserted'}, most relevant first`));
        if (T.cascade) figs.push(fig(T.cascade.picture, `rank correlation with the original map as layers are randomised from the top (${T.cascade.layers.join(' → ')})`));
        add('trust', 'Which map to trust', `Each method scored on the first ${T.items} items: how fast the predicted class's probability falls when its most relevant pixels are deleted (lower is better) or rises when they are inserted (higher is better), and whether its maps change when the model's weights are randomised or another class is explained (lower similarity is better: a map that survives those does not explain this model's decision). Bold: the best method per metric. convscope evaluate computes these and more on any number of items.`, [table, el('div', { class: 'grid' }, figs)]);
    }

    // --- top patches ---
    if (R.patches.length) {
        const figs = R.patches.map((p) => {
            const doms = p.channels.filter((c) => c.dominant).map((c) => `c${c.channel}: ${c.dominant.name} ${c.dominant.count}/${c.entries.length}`);
            return el('figure', {}, [pic(p.picture, `top patches of ${p.layer}`),
                el('figcaption', { text: `${p.layer}: first ${p.channels.length} of ${p.total_channels} channels, ${num(p.images_scanned)} items scanned. Dominant labels: ${doms.join(', ')}` })]);
        });
        add('patches', 'Maximally activating patches', 'For each channel, the dataset items where it fires most, cropped to the receptive field of the strongest unit. A row per channel.', [el('div', { class: 'grid' }, figs)]);
    }

    // --- feature visualisation ---
    if (R.feature_vis.length) {
        const figs = R.feature_vis.map((f) => fig(f.picture, `${f.layer}: inputs optimised for ${f.channels.length} channels (${f.steps} steps); caption: the channel's mean activation reached`));
        add('feature-vis', 'Feature visualisation', 'Inputs synthesised by gradient ascent so that one channel\'s mean activation is as large as possible (with jitter, scaling, rotation and blur as regularisers).', [el('div', { class: 'grid' }, figs)]);
    }

    // --- the map ---
    if (R.map) {
        const mp = R.map;
        const canvas = el('canvas', { id: 'map-canvas' });
        const hoverCanvas = el('canvas', { width: String(mp.sprite.thumb), height: String(mp.sprite.thumb) });
        const hoverLabel = el('span');
        const hover = el('div', { class: 'map-hover', id: 'map-hover', hidden: '' }, [hoverCanvas, hoverLabel]);
        const legend = el('div', { class: 'legend' }, mp.class_names.map((name, c) => el('div', {}, [el('i', { style: `background:rgb(${mp.class_colours[c].join(',')})` }), name])));
        const info = el('span', { class: 'note', id: 'map-info', text: 'drag to pan, wheel or buttons to zoom, hover a point to see its item' });
        const zin = el('button', { id: 'map-zoom-in', text: '+' }), zout = el('button', { id: 'map-zoom-out', text: '−' }), fit = el('button', { id: 'map-fit', text: 'Fit' });
        const wrap = el('div', { class: 'map-wrap' }, [canvas, hover, legend]);
        const what = mp.source === 'file'
            ? `The map in ${mp.folder} (made by convscope embed${mp.layer ? ' from ' + mp.layer : ''}): ${num(mp.n)} points; items the network sees as similar lie close together`
            : `t-SNE of the ${mp.layer} features of the first ${num(mp.n)} items: items the network sees as similar lie close together`;
        const quality = [];
        if (mp.kl_divergence !== null && mp.kl_divergence !== undefined) quality.push(`final KL divergence ${mp.kl_divergence.toFixed(3)}`);
        if (mp.knn_accuracy !== null && mp.knn_accuracy !== undefined) quality.push(`10-NN label accuracy in the map ${pct(mp.knn_accuracy)}`);
        if (mp.neighbour_preservation !== null && mp.neighbour_preservation !== undefined)
            quality.push(`neighbour preservation ${mp.neighbour_preservation.toFixed(3)} (share of each item's 10 nearest neighbours in feature space that stay among its 10 nearest on the map)`);
        add('map', 'Dataset map', what + (quality.length ? '. ' + quality.join(', ') : '') + '.', [
            el('div', { class: 'toolbar' }, [zin, zout, fit, info]), wrap,
            el('div', { class: 'grid' }, [fig(mp.scatter, 'coloured by label'), fig(mp.thumbnails, 'the items at their places (overlaps left out)')]),
        ]);
        // The view starts once the section is in the document (it measures the canvas).
        R._startMap = () => {
            const bytes = atob(mp.points);
            const buffer = new ArrayBuffer(bytes.length), view8 = new Uint8Array(buffer);
            for (let k = 0; k < bytes.length; k++) view8[k] = bytes.charCodeAt(k);
            const p = MapView.unpack(buffer, mp.n);
            // Thumbnail sheets, each loaded when one of its items is first hovered.
            const sp = mp.sprite, sheets = new Map();
            const hctx = hoverCanvas.getContext('2d');
            let shown = -1;
            const drawThumb = (item) => {
                const k = Math.floor(item / sp.per_sheet);
                let img = sheets.get(k);
                if (!img) {
                    img = new Image();
                    img.onload = () => { if (shown === item) drawThumb(item); };
                    img.src = `${sp.folder}/${k}.png`;
                    sheets.set(k, img);
                }
                const t = sp.thumb, slot = item % sp.per_sheet, col = slot % sp.cols, row = Math.floor(slot / sp.cols);
                hctx.clearRect(0, 0, t, t);
                if (img.complete && img.naturalWidth > 0) hctx.drawImage(img, col * t, row * t, t, t, 0, 0, t, t);
            };
            const view = new MapView(canvas, { x: p.x, y: p.y, labels: p.labels, colours: mp.class_colours, unknownColour: mp.unknown_colour }, {
                onHover(i, e) {
                    if (!view.placeTooltip(hover, i, e)) return;
                    const item = p.items[i], l = p.labels[i];
                    shown = item;
                    drawThumb(item);
                    hoverLabel.textContent = `#${item}${l >= 0 ? ' ' + (mp.class_names[l] || l) : ''}`;
                    hover.dataset.index = String(i);
                    hover.dataset.item = String(item);
                },
                onClick(i) { info.textContent = `item ${p.items[i]}${p.labels[i] >= 0 ? ': ' + (mp.class_names[p.labels[i]] || p.labels[i]) : ''}`; },
            });
            zin.addEventListener('click', () => view.zoomBy(1.6));
            zout.addEventListener('click', () => view.zoomBy(1 / 1.6));
            fit.addEventListener('click', () => view.reset());
            window.reportMap = view;
            window.reportMapSheets = sheets;
        };
    }

    if (R.skipped && R.skipped.length)
        add('skipped', 'Left out', '', [el('ul', {}, R.skipped.map((s) => el('li', { text: s })))]);

    const nav = el('nav', { class: 'toc' }, toc.map(([id, title]) => el('a', { href: '#' + id, text: title })));
    root.replaceChildren(header, nav, el('main', {}, sections));
    if (R._startMap) R._startMap();
    document.body.dataset.ready = '1';
})();
