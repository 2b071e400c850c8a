#!/bin/sh
# MPCTL_LAUNCHER for an agent whose launcher runs in another container (the
# pod's or compose service's launcher container, `mpctl launcher --dir DIR
# --persistent`). The agent runs `$MPCTL_LAUNCHER launcher --dir DIR` when
# nobody answers on DIR/launcher.sock; instead of starting a launcher inside
# the agent's own container (which would die with it, taking the processes
# along), this waits for the launcher container's socket and says "ready".
# Arguments: launcher --dir DIR
dir=$3
i=0
while [ ! -S "$dir/launcher.sock" ]; do
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then
        echo "mpctl-launcher-wait: no launcher serving $dir after 10 s (is the launcher container running?)" >&2
        exit 1
    fi
    sleep 0.1
done
echo ready
