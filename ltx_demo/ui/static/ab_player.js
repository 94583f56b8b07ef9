// The A/B player: one script for the page (launch(head=...)), delegated events, so it keeps working whenever the
// compare view is re-rendered. The clock is the one <audio> element (the heard result's sound); both silent videos
// follow it the same way, through their playbackRate alone: 0 until the clock runs (an audio output takes tens of ms
// to start), +-10% for drift (25% past half a frame); a seek only past 1.5 frames, since a pause or seek makes a
// playing video restart its pipeline. Frame steps land on frame centres, (k + 0.5) / fps.
(() => {
  if (window.ltxAB) return;
  const tuning = {nudge: 0.1, bigNudge: 0.25, deadbandFrames: 0.25, seekFrames: 1.5, windowFrames: 0.5};
  const parts = () => {
    const root = document.querySelector('#ab-compare .ab-root');
    if (!root) return null;
    const a = root.querySelector('video[data-role="a"]'), b = root.querySelector('video[data-role="b"]');
    const clock = root.querySelector('audio.ab-sound');
    if (!a || !b || !clock) return null;
    return {root, a, b, clock, videos: [a, b], fps: parseFloat(root.dataset.fps),
            frames: parseInt(root.dataset.frames, 10), duration: parseFloat(root.dataset.duration)};
  };
  const frameAt = (p, t) => Math.min(p.frames - 1, Math.max(0, Math.floor(t * p.fps + 1e-6)));
  const draw = (p) => {
    const t = p.clock.currentTime, paused = p.clock.paused;
    const label = p.root.querySelector('.ab-time');
    if (label) label.textContent = `frame ${frameAt(p, t) + 1} / ${p.frames} · ${t.toFixed(3)} s`;
    const scrub = p.root.querySelector('.ab-scrub');
    if (scrub && document.activeElement !== scrub) scrub.value = String(t);
    const head = p.root.querySelector('.ab-playhead');
    if (head) { const x = String(1000 * Math.min(t, p.duration) / p.duration); head.setAttribute('x1', x);
                head.setAttribute('x2', x); }
    const button = p.root.querySelector('[data-ab="play"]');
    if (button) button.textContent = paused ? '▶ Play' : '❚❚ Pause';
    p.root.dataset.state = paused ? 'paused' : 'playing';
  };
  const seek = (p, t) => {
    t = Math.max(0, Math.min(t, p.duration));
    for (const media of [p.clock, ...p.videos]) media.currentTime = t;
    draw(p);
  };
  const pause = (p) => {
    for (const media of [p.clock, ...p.videos]) { media.pause(); media.playbackRate = 1; }
    for (const video of p.videos) video.currentTime = p.clock.currentTime;
    draw(p);
  };
  const clock = {t: 0, at: 0, running: false};  // the clock's progress over the last window
  const play = async (p) => {
    if (p.clock.currentTime >= p.duration - 0.5 / p.fps) seek(p, 0);
    for (const video of p.videos) { video.currentTime = p.clock.currentTime; video.playbackRate = 0; }
    Object.assign(clock, {t: p.clock.currentTime, at: performance.now(), running: false});
    try { await Promise.all([p.clock.play(), ...p.videos.map((v) => v.play())]); }
    catch (err) { console.warn('A/B play', err); pause(p); }
    draw(p);
  };
  const step = (p, delta) => {
    pause(p);
    const k = Math.min(p.frames - 1, Math.max(0, Math.round(p.clock.currentTime * p.fps - 0.5) + delta));
    seek(p, (k + 0.5) / p.fps);
  };
  const hear = (p, side) => {
    const src = p.clock.dataset[side === 'b' ? 'srcB' : 'srcA'];
    p.root.querySelectorAll('[data-ab="audio"]').forEach((el) => el.classList.toggle('on', el.dataset.side === side));
    if (p.root.dataset.audio === side) return;
    p.root.dataset.audio = side;
    const t = p.clock.currentTime;
    pause(p);
    p.clock.src = src;
    p.clock.addEventListener('loadedmetadata', () => seek(p, t), {once: true});
  };
  const follow = (p, video, t) => {
    const drift = video.currentTime - t, band = tuning.deadbandFrames / p.fps;
    const nudge = Math.abs(drift) > 0.5 / p.fps ? tuning.bigNudge : tuning.nudge;
    let rate = drift < -band ? 1 + nudge : drift > band ? 1 - nudge : 1;
    if (!clock.running) rate = drift > -band ? 0 : 1;  // wait for the clock, unless already behind it
    if (Math.abs(drift) > tuning.seekFrames / p.fps) { video.currentTime = t; rate = 1; }
    if (video.playbackRate !== rate) video.playbackRate = rate;
    if (video.paused && !video.ended) video.play().catch(() => {});
  };
  const tick = () => {
    const p = parts();
    if (p && !p.clock.paused) {
      const t = p.clock.currentTime, now = performance.now();
      if (t >= p.duration || p.clock.ended) {
        pause(p); seek(p, p.duration);
      } else {
        const wall = (now - clock.at) / 1000;
        if (wall >= tuning.windowFrames / p.fps) Object.assign(clock, {t, at: now, running: t - clock.t > 0.5 * wall});
        for (const video of p.videos) follow(p, video, t);
      }
      draw(p);
    }
    requestAnimationFrame(tick);
  };
  document.addEventListener('click', (event) => {
    const p = parts();
    if (!p) return;
    const control = event.target.closest('#ab-compare [data-ab]');
    if (control) {
      const action = control.dataset.ab;
      if (action === 'play') { if (p.clock.paused) play(p); else pause(p); }
      else if (action === 'prev') step(p, -1);
      else if (action === 'next') step(p, 1);
      else if (action === 'audio') hear(p, control.dataset.side);
      return;
    }
    const wave = event.target.closest('#ab-compare .ab-wave-svg');
    if (wave) {
      const box = wave.getBoundingClientRect();
      pause(p); seek(p, (event.clientX - box.left) / box.width * p.duration);
    }
  });
  document.addEventListener('input', (event) => {
    if (!event.target.matches('#ab-compare .ab-scrub')) return;
    const p = parts();
    if (!p) return;
    if (!p.clock.paused) pause(p);
    seek(p, parseFloat(event.target.value));
  });
  document.addEventListener('keydown', (event) => {
    if (!event.target.closest || !event.target.closest('#ab-compare .ab-root')) return;
    const p = parts();
    if (!p || event.target.matches('input')) return;
    if (event.key === 'ArrowLeft') { step(p, -1); event.preventDefault(); }
    else if (event.key === 'ArrowRight') { step(p, 1); event.preventDefault(); }
    else if (event.key === ' ') { if (p.clock.paused) play(p); else pause(p); event.preventDefault(); }
  });
  document.addEventListener('loadedmetadata', (event) => {
    const p = parts();
    if (p && p.root.contains(event.target)) draw(p);
  }, true);
  window.ltxAB = {parts, play, pause, step, seek, hear, tuning};
  requestAnimationFrame(tick);
})();
