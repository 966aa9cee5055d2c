"""The Grafana dashboard shipped in the chart, as typed Python (grafana-foundation-sdk).

`python -m dashboards.qwen_chat` (`make dashboard`) writes charts/qwen-chat/dashboards/qwen-chat.json;
`--check` fails when the committed JSON is not what this code generates.
"""
