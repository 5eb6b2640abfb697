"""Deploy files (`authkeep deploy init`) and post-deploy checks (`authkeep deploy check`)."""
