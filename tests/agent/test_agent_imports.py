"""The live agent's memory budget (RSS < 100 MB on every GPU node) rests on what it
never imports: Arrow and pandas (the report runs in a child process) and the kubernetes
package (collectors/kubehttp.py talks to the API server)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LIVE_AGENT = (
    "import sys\n"
    "import agent.cmd_agent, agent.daemon, agent.metering, agent.rollups, agent.exporter\n"
    "import agent.cmd_record, agent.live, collectors.nvml, collectors.placement, collectors.kubehttp\n"
    "from agent.daemon import http_server\n"
    "import apscheduler.schedulers.background, prometheus_client.exposition\n"
    "print(' '.join(sorted(m for m in ('pyarrow', 'pandas', 'kubernetes') if m in sys.modules)))\n"
)


def test_live_agent_modules_leave_out_arrow_pandas_and_kubernetes():
    done = subprocess.run([sys.executable, "-c", LIVE_AGENT], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
