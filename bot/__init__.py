"""kps-bot: a Slack chat-ops bot for Huawei Cloud Key Pair Service tasks."""
