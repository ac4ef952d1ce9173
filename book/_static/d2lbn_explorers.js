/* d2lbn's interactive explorers (d2lbn/explore.py writes them into the notebooks' outputs).
 *
 * Each <div class="d2lbn-explorer"> holds its data as JSON: a Plotly figure, the controls, and for
 * every setting of the controls the trace data and a readout line, all computed by d2lbn in the
 * notebook. This script builds the controls, draws the figure with Plotly (_static/plotly.min.js,
 * loaded before it), and on every change swaps in that setting's precomputed data: nothing is
 * computed here. It follows the page's light/dark theme (pydata-sphinx-theme's data-theme).
 * After each draw the root carries data-state="<position of each control, joined by '-'>".
 */
(function () {
  'use strict';

  function dark() {
    return document.documentElement.dataset.theme === 'dark';
  }

  function themed(layout, width, longTicks) {
    const copy = JSON.parse(JSON.stringify(layout));
    const narrow = width && width < 500;        // a phone: fewer ticks, so that they do not touch
    const text = getComputedStyle(document.body).color || (dark() ? '#e0e0e0' : '#222');
    const grid = dark() ? 'rgba(255,255,255,0.16)' : 'rgba(0,0,0,0.10)';
    const line = dark() ? 'rgba(255,255,255,0.45)' : 'rgba(0,0,0,0.45)';
    copy.paper_bgcolor = 'rgba(0,0,0,0)';
    copy.plot_bgcolor = 'rgba(0,0,0,0)';
    copy.font = Object.assign({}, copy.font, {color: text});
    copy.legend = Object.assign({bgcolor: 'rgba(0,0,0,0)'}, copy.legend);
    copy.autosize = true;
    delete copy.width;
    delete copy.template;
    for (const key of Object.keys(copy)) {
      if (/^[xy]axis\d*$/.test(key)) {
        copy[key] = Object.assign({}, copy[key], {gridcolor: grid, zerolinecolor: grid,
                                                  linecolor: line, color: text});
        if (narrow && longTicks && /^x/.test(key) && longTicks(key)) copy[key].nticks = 3;
      }
    }
    for (const note of copy.annotations || []) {
      note.font = Object.assign({}, note.font, {color: text});
    }
    return copy;
  }

  const CONFIG = {responsive: true, displayModeBar: false, scrollZoom: false, staticPlot: false};

  function setup(root) {
    const spec = JSON.parse(root.querySelector('script.d2lbn-explorer-data').textContent);
    const plot = root.querySelector('.d2lbn-explorer-plot');
    const readout = root.querySelector('.d2lbn-explorer-readout');
    const box = root.querySelector('.d2lbn-explorer-controls');
    const inputs = [];
    spec.controls.forEach(function (control) {
      const id = root.id + '-' + control.name;
      const row = document.createElement('div');
      row.className = 'd2lbn-explorer-control';
      const label = document.createElement('label');
      label.htmlFor = id;
      label.textContent = control.label;
      let input;
      if (control.kind === 'select') {
        input = document.createElement('select');
        control.labels.forEach(function (text, i) {
          const option = document.createElement('option');
          option.value = String(i);
          option.textContent = text;
          input.appendChild(option);
        });
      } else {
        input = document.createElement('input');
        input.type = 'range';
        input.min = '0';
        input.max = String(control.labels.length - 1);
        input.step = '1';
      }
      input.id = id;
      input.name = control.name;
      input.value = String(control.initial);
      const value = document.createElement('output');
      value.htmlFor = id;
      row.append(label, input, value);
      box.appendChild(row);
      inputs.push({control: control, input: input, value: value});
    });

    // x axes whose values reach four digits (training steps) get fewer ticks on a phone
    const longTicks = function (axis) {
      const name = 'x' + axis.slice(5);
      return spec.figure.data.some(function (trace) {
        return (trace.xaxis || 'x') === name &&
          (trace.x || []).some(function (v) { return Math.abs(v) >= 1000; });
      });
    };

    function key() {
      return inputs.map(function (c) { return c.input.value; }).join('-');
    }

    function draw() {
      const k = key();
      const frame = spec.frames[k];
      inputs.forEach(function (c) {
        const text = c.control.labels[Number(c.input.value)];
        c.value.textContent = c.control.kind === 'select' ? '' : text;
        c.input.setAttribute('aria-valuetext', text);
      });
      const data = spec.figure.data.map(function (trace, i) {
        return Object.assign({}, trace, frame.traces[String(i)] || {});
      });
      readout.textContent = frame.readout;
      return Plotly.react(plot, data, themed(spec.figure.layout, plot.clientWidth, longTicks), CONFIG).then(function () {
        root.dataset.state = k;
      });
    }

    inputs.forEach(function (c) {
      c.input.addEventListener(c.control.kind === 'select' ? 'change' : 'input', draw);
    });
    new MutationObserver(function () {
      Plotly.relayout(plot, themed(spec.figure.layout, plot.clientWidth, longTicks));
    }).observe(document.documentElement, {attributes: true, attributeFilter: ['data-theme']});
    root.classList.add('d2lbn-explorer-live');
    return draw();
  }

  function start() {
    const roots = document.querySelectorAll('.d2lbn-explorer');
    if (!roots.length) return;
    if (typeof Plotly === 'undefined') {
      console.error('d2lbn explorers: Plotly is missing (_static/plotly.min.js did not load)');
      return;
    }
    roots.forEach(function (root) {
      setup(root).then(function () { root.dataset.ready = '1'; });
    });
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
