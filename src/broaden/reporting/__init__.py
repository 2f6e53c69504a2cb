"""Terminal presentation of results (rich tables); the HTML report lives in broaden.report."""
