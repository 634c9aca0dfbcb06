// Helpers for uPlot charts shared by the local dashboard (served as a file) and the simulator's
// HTML report (inlined): a tooltip that follows the cursor, zoom kept in step across a group of
// charts, and axis value formats. Plain browser JavaScript, no build step; uPlot is a global.
/* global document, window */
'use strict';

(function () {
  /** A tooltip listing every visible series' value at the cursor; `formatX` formats the time. */
  function tooltipPlugin(formatX) {
    let tip = null;
    return {
      hooks: {
        init(u) {
          tip = document.createElement('div');
          tip.className = 'chart-tooltip';
          tip.hidden = true;
          u.over.appendChild(tip);
          u.over.addEventListener('mouseleave', () => { tip.hidden = true; });
        },
        setCursor(u) {
          const i = u.cursor.idx;
          if (i === null || i === undefined || u.cursor.left < 0) { tip.hidden = true; return; }
          const lines = [formatX(u.data[0][i])];
          u.series.forEach((s, k) => {
            if (k === 0 || !s.show) return;
            const v = u.data[k][i];
            if (v === null || v === undefined) return;
            lines.push(`${s.label}: ${s.value ? s.value(u, v, k, i) : v}`);
          });
          tip.textContent = lines.join('\n');
          tip.hidden = false;
          // Keep the tip inside the plot: flip it to the left/top of the cursor near the edges.
          const w = tip.offsetWidth, h = tip.offsetHeight;
          const left = u.cursor.left + 12 + w > u.over.clientWidth ? u.cursor.left - w - 12 : u.cursor.left + 12;
          const top = u.cursor.top + 12 + h > u.over.clientHeight ? Math.max(0, u.cursor.top - h - 12) : u.cursor.top + 12;
          tip.style.left = `${Math.max(0, left)}px`;
          tip.style.top = `${top}px`;
        },
      },
    };
  }

  /** Zooming one chart of `group` (an array, filled as charts are made) zooms every other one. */
  function zoomSyncPlugin(group) {
    let busy = false;
    return {
      hooks: {
        setScale(u, key) {
          if (key !== 'x' || busy) return;
          busy = true;
          for (const other of group) if (other !== u) other.setScale('x', { min: u.scales.x.min, max: u.scales.x.max });
          busy = false;
        },
      },
    };
  }

  /** A number with at most `digits` decimals and a thousands separator. */
  function num(v, digits) {
    return v === null || v === undefined ? '–' : Number(v).toLocaleString('en-US', { maximumFractionDigits: digits });
  }

  window.CaDmsCharts = { tooltipPlugin, zoomSyncPlugin, num };
})();
