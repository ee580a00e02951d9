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

// Add a thermometer: one whole image for a new board, made here from the Pi's board image and
// the config file in the page, so the secrets never go back to the Pi.
(function () {
  var box = document.getElementById('whole');
  var link = document.getElementById('config-download');
  if (!box || !link || !window.fetch || !window.Blob) return;
  box.hidden = false;
  var button = document.getElementById('whole-image');
  var error = box.querySelector('.error');
  button.addEventListener('click', function () {
    button.disabled = true;
    error.hidden = true;
    fetch(box.dataset.board).then(function (r) {
      if (!r.ok) throw new Error('HTTP ' + r.status);
      return r.arrayBuffer();
    }).then(function (buf) {
      var image = new Uint8Array(buf);
      var raw = atob(link.href.slice(link.href.indexOf(',') + 1));
      var config = new Uint8Array(raw.length);
      for (var i = 0; i < raw.length; i++) config[i] = raw.charCodeAt(i);
      var at = Number(box.dataset.offset);
      if (at + config.length > image.length) throw new Error('the config does not fit the board image');
      image.set(config, at);
      var a = document.createElement('a');
      a.href = URL.createObjectURL(new Blob([image], { type: 'application/octet-stream' }));
      a.download = box.dataset.name;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(function () { URL.revokeObjectURL(a.href); }, 60000);
    }).catch(function (e) {
      error.textContent = box.dataset.failed + ': ' + e.message;
      error.hidden = false;
    }).then(function () { button.disabled = false; });
  });
})();
