// tollgate console: small progressive enhancements. Everything works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Forms that need a second thought (revoking an agent) ask first.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  // Deny asks first too: it ends the request for good.
  const deny = document.getElementById("deny");
  if (deny) {
    deny.addEventListener("click", (event) => {
      if (!window.confirm("Deny this request? The agent's retry will be refused.")) event.preventDefault();
    });
  }
  // Copy a shown-once key to the clipboard.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const text = document.getElementById(button.dataset.copy)?.textContent ?? "";
      try {
        await navigator.clipboard.writeText(text.trim());
        button.textContent = "Copied";
      } catch {
        button.textContent = "Select and copy the key by hand";
      }
    });
  }
  // The approvals queue refreshes itself every 15 s while nothing is being typed.
  if (document.getElementById("pending") || document.querySelector(".empty")) {
    if (location.pathname === "/approvals") {
      setTimeout(() => { if (!document.activeElement || document.activeElement === document.body) location.reload(); }, 15000);
    }
  }
});
