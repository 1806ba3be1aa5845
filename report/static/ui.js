
(function(){
var box=document.getElementById('dc-filter');
if(box){box.addEventListener('input',function(){var q=box.value.toLowerCase();
document.querySelectorAll('table.filterable tbody tr').forEach(function(tr){
tr.style.display=(!q||tr.textContent.toLowerCase().indexOf(q)>=0)?'':'none';});});}
document.querySelectorAll('table').forEach(function(t){var ths=t.querySelectorAll('thead th');
ths.forEach(function(th,i){th.style.cursor='pointer';th.title='sort';th.addEventListener('click',function(){
var tb=t.tBodies[0];if(!tb)return;var rows=Array.prototype.slice.call(tb.rows);var asc=th.getAttribute('data-asc')!=='1';
th.setAttribute('data-asc',asc?'1':'0');rows.sort(function(a,b){var x=a.cells[i]?a.cells[i].textContent:'',y=b.cells[i]?b.cells[i].textContent:'';
var nx=parseFloat(x.replace(/,/g,'')),ny=parseFloat(y.replace(/,/g,''));var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?c:-c;});
rows.forEach(function(r){tb.appendChild(r);});});});});
var n=document.querySelectorAll('section[data-section]').length;document.body.setAttribute('data-sections',String(n));
document.body.setAttribute('data-ready','1');
})();
