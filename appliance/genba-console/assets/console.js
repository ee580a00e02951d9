// Live values on the overview: Server-Sent Events from /console/live (fed by the journal).
(function () {
  var root = document.querySelector('[data-live]');
  if (!root || !window.EventSource) return;
  var lang = document.documentElement.lang;
  function ago(ms) {
    if (!ms) return root.dataset.never;
    var s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    var t = s < 60 ? s + 's' : s < 3600 ? Math.round(s / 60) + ' min' : s < 86400 ? Math.round(s / 3600) + ' h' : Math.round(s / 86400) + ' d';
    return lang === 'ja' ? t + '前' : t + ' ago';
  }
  function reloadOnce() {
    // A new device or stream: the page is rendered again, once.
    if (!root.dataset.reloading) { root.dataset.reloading = '1'; location.reload(); }
  }
  function apply(snapshot) {
    snapshot.devices.forEach(function (d) {
      var card = document.getElementById('device-' + d.id);
      if (!card) { reloadOnce(); return; }
      card.className = 'card ' + d.state;
      var badge = card.querySelector('.state');
      if (badge) { badge.className = 'state ' + d.state; badge.textContent = d.state_text; }
      var seen = card.querySelector('[data-seen]');
      if (seen) { seen.dataset.seen = d.last_seen || ''; seen.textContent = ago(d.last_seen); }
      d.streams.forEach(function (s) {
        var el = card.querySelector('[data-stream="' + CSS.escape(s.name) + '"]');
        if (el) el.textContent = s.text;
        else reloadOnce();
      });
    });
  }
  var es;
  function connect() {
    es = new EventSource('/console/live');
    es.addEventListener('snapshot', function (e) { document.body.classList.remove('offline'); apply(JSON.parse(e.data)); });
    es.onopen = function () { document.body.classList.remove('offline'); };
    es.onerror = function () { document.body.classList.add('offline'); };
  }
  connect();
  setInterval(function () {
    document.querySelectorAll('[data-seen]').forEach(function (el) {
      el.textContent = ago(Number(el.dataset.seen) || 0);
    });
  }, 15000);
})();
