// canopy KWin script: on minimize, start canopy-state@minimized-<pid>.service (user systemd);
// on restore, canopy-state@focused-<pid>.service. The unit runs `canopy ctl state` for the
// window's app cgroup. SPDX-License-Identifier: GPL-2.0-only

function setState(window, state) {
    if (!window || !window.pid || window.pid <= 0 || !window.normalWindow) {
        return;
    }
    callDBus("org.freedesktop.systemd1", "/org/freedesktop/systemd1",
             "org.freedesktop.systemd1.Manager", "StartUnit",
             "canopy-state@" + state + "-" + window.pid + ".service", "replace");
}

function watch(window) {
    window.minimizedChanged.connect(function () {
        setState(window, window.minimized ? "minimized" : "focused");
    });
}

workspace.windowList().forEach(watch);
workspace.windowAdded.connect(watch);
