# The fleet page: every node's backups from the Chef server, in one table.
#
#   knife exec knife/backup_agent_fleet.rb                  # a text table
#   knife exec knife/backup_agent_fleet.rb json             # the rows as JSON
#   knife exec knife/backup_agent_fleet.rb html fleet.html  # a self-contained HTML page
#   knife exec knife/backup_agent_fleet.rb [json|html FILE] 'chef_environment:production'  # only some nodes
#
# It reads what the cookbook's Ohai plugin (cookbooks/backup_agent/ohai/backup_agent.rb) puts on
# each node at every converge: node['backup_agent']['status'], so it shows each node as of its
# last chef-client run (the `collected` column). One row per node and job: last result and
# success, staleness, stored bytes, monthly cost and the last restore drill; nodes whose agent
# could not report get a row saying so. Nothing is written to the server.
#
# Arguments are words, not --options: knife itself parses every --option on its command line.

require 'json'
require 'cgi'

args = ARGV.drop(ARGV.index { |a| a.end_with?('backup_agent_fleet.rb') }.to_i + 1)
output = 'text'
html_file = nil
case args.first
when 'json'
  output = args.shift
when 'html'
  output = args.shift
  html_file = args.shift
  abort 'backup_agent_fleet: html needs a FILE to write' if html_file.nil? || html_file.empty?
end
query = args.shift || 'backup_agent_stale:*'

def fleet_bytes(n)
  return '-' unless n.is_a?(Numeric)
  units = %w(B KiB MiB GiB TiB)
  i = 0
  value = n.to_f
  while value >= 1024 && i < units.size - 1
    value /= 1024
    i += 1
  end
  i.zero? ? "#{n.to_i} B" : format('%.1f %s', value, units[i])
end

def fleet_usd(x)
  x.is_a?(Numeric) ? format('%.4f', x) : '-'
end

rows = []
nodes.search(query).sort_by(&:name).each do |node|
  status = node['backup_agent'] && node['backup_agent']['status']
  next unless status

  base = { 'node' => node.name, 'environment' => node.chef_environment, 'collected' => status['collected_at'],
           'daemon_running' => status['daemon_running'] }
  if status['error']
    rows << base.merge('job' => nil, 'result' => 'agent cannot report', 'stale' => true)
    next
  end
  (status['jobs'] || {}).sort.each do |name, job|
    rows << base.merge(
      'job' => name, 'type' => job['type'], 'schedule' => job['schedule'], 'result' => job['result'],
      'last_success' => job['last_success'], 'stale' => job['stale'] == true,
      'consecutive_failures' => job['consecutive_failures'], 'snapshots' => job['snapshots'],
      'stored_bytes' => job['stored_bytes'], 'monthly_usd' => job['monthly_usd'],
      'drill_result' => job['drill_result'], 'last_drill_success' => job['last_drill_success'],
      'drill_failed' => job['drill_result'] == 'failed', 'prune_result' => job['prune_result']
    )
  end
end

columns = [%w(NODE node), %w(ENV environment), %w(JOB job), %w(RESULT result), ['LAST SUCCESS', 'last_success'],
           %w(STALE stale), %w(BYTES stored_bytes), ['USD/MONTH', 'monthly_usd'], %w(DRILL drill_result),
           %w(COLLECTED collected)]
cell = lambda do |row, key|
  value = row[key]
  case key
  when 'stored_bytes' then fleet_bytes(value)
  when 'monthly_usd' then fleet_usd(value)
  when 'stale' then value ? 'STALE' : 'ok'
  else value.nil? ? '-' : value.to_s
  end
end
stale_nodes = rows.select { |r| r['stale'] }.map { |r| r['node'] }.uniq
drill_nodes = rows.select { |r| r['drill_failed'] }.map { |r| r['node'] }.uniq
total = rows.map { |r| r['monthly_usd'] }.grep(Numeric).sum
summary = "#{rows.map { |r| r['node'] }.uniq.size} node(s), #{rows.size} job(s); stale: #{stale_nodes.size} node(s)" \
          "#{stale_nodes.empty? ? '' : " (#{stale_nodes.join(', ')})"}; drill failed: #{drill_nodes.size} node(s)" \
          "#{drill_nodes.empty? ? '' : " (#{drill_nodes.join(', ')})"}; #{fleet_usd(total)} USD/month"

case output
when 'json'
  puts JSON.pretty_generate('rows' => rows, 'stale_nodes' => stale_nodes, 'drill_failed_nodes' => drill_nodes,
                            'monthly_usd' => total.round(6))
when 'html'
  head = columns.map { |title, _| "<th>#{CGI.escapeHTML(title)}</th>" }.join
  body = rows.map do |r|
    klass = r['stale'] || r['drill_failed'] ? ' class="bad"' : ''
    "<tr#{klass}>" + columns.map { |_, key| "<td>#{CGI.escapeHTML(cell.call(r, key))}</td>" }.join + '</tr>'
  end.join("\n")
  page = <<~HTML
    <!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>backup fleet</title>
    <style>body{font:14px system-ui,sans-serif;margin:24px}table{border-collapse:collapse}
    td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#eee}
    tr.bad td{background:#fdd}</style></head><body><h1>Backup fleet</h1>
    <p>#{CGI.escapeHTML(summary)}; generated #{Time.now.utc.iso8601}</p>
    <table><tr>#{head}</tr>
    #{body}
    </table></body></html>
  HTML
  File.write(html_file, page)
  puts "wrote #{html_file}"
else
  table = [columns.map(&:first)] + rows.map { |r| columns.map { |_, key| cell.call(r, key) } }
  widths = columns.each_index.map { |i| table.map { |line| line[i].length }.max }
  table.each { |line| puts line.each_with_index.map { |c, i| c.ljust(widths[i]) }.join('  ').rstrip }
  puts summary
end

# knife exec runs every further argument as another script: stop here.
exit 0
