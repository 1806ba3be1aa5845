
(function(){var errs=[];function put(m){errs.push(String(m));var el=document.getElementById('dc-errors');
if(el){el.setAttribute('data-count',String(errs.length));el.textContent=errs.join('\n');}}
window.__dcErrors=errs;window.addEventListener('error',function(e){put('error: '+(e.message||e.type));});
window.addEventListener('unhandledrejection',function(e){put('rejection: '+e.reason);});
document.addEventListener('securitypolicyviolation',function(e){put('blocked: '+e.blockedURI);});
var ce=console.error;console.error=function(){put('console: '+Array.prototype.join.call(arguments,' '));return ce.apply(console,arguments);};
document.addEventListener('DOMContentLoaded',function(){put.flush=1;var el=document.getElementById('dc-errors');
if(el&&errs.length){el.setAttribute('data-count',String(errs.length));el.textContent=errs.join('\n');}});
})();
