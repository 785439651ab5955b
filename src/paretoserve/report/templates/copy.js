function copyCode(button) {
  var text = button.previousElementSibling.textContent;
  if (navigator.clipboard) {
    navigator.clipboard.writeText(text).then(function () { button.textContent = "copied"; },
                                             function () { button.textContent = "select + copy"; });
  }
}
